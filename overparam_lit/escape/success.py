"""Success statistics of multi-start training and the "multi-start lottery" prediction.

A *success* is a member (one seed of one width) whose final relative training loss (training
loss divided by the variance of the targets: 1 is the best constant predictor) ends below a
threshold. Success rates get Wilson score intervals; :func:`multistart_prediction` turns the
rate measured at the teacher's width ``r*`` into a prediction for a wider student.

Pure Python / torch / scipy (no Lightning); rows come from ``members.csv`` or any table with one
row per member.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from overparam_lit.utils import ConfigError, check

__all__ = ["multistart_prediction", "relative_losses", "success_interval", "success_rates"]


def relative_losses(losses: Tensor, target_variance: float) -> Tensor:
    """Per-member loss divided by the variance of the targets (1 is a constant predictor)."""
    check(target_variance > 0, "target variance must be positive", target_variance,
          "Check that the regression targets are not constant.")
    return losses / float(target_variance)


def success_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Success rate and its Wilson score interval ``(rate, low, high)``.

    The interval is ``(p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``z`` the
    two-sided normal quantile of ``confidence``; unlike the normal approximation it stays inside
    ``[0, 1]`` and is not empty at 0 or ``n`` successes.
    """
    try:
        successes, trials = operator.index(successes), operator.index(trials)
    except TypeError:
        raise ConfigError(f"successes and trials must be integers (got {(successes, trials)!r}). "
                          "Count successes among whole trials.") from None
    check(trials >= 1 and 0 <= successes <= trials, "need 0 <= successes <= trials and trials >= 1",
          (successes, trials), "Count successes among at least one trial.")
    check(0 < confidence < 1, "confidence must lie in (0, 1)", confidence, "Use e.g. 0.95.")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    if successes == 0:
        low = 0.0  # exact: the float expression leaves a rounding residue
    if successes == trials:
        high = 1.0
    return p, low, high


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} is not a number (got {value!r}). Pass the final relative loss "
                          "of every member (nan for a diverged one).") from None


def success_rates(rows: Iterable[Mapping[str, Any]], threshold: float, by: str = "width",
                  loss_key: str = "relative_loss", confidence: float = 0.95) -> list[dict[str, Any]]:
    """Successes, trials, rate and Wilson interval per value of ``by`` (default: per width).

    Args:
        rows: one row per member (mappings such as ``members.csv`` rows, values may be strings),
            each with ``by`` (``width``), ``seed`` and ``loss_key``: its final relative training
            loss (training loss / target variance, :func:`relative_losses`). Pass the final row
            of each member only; a repeated member (``by``, ``width`` and ``seed``) is refused.
        threshold: a member succeeds when its relative loss is ``< threshold``; a non-finite loss
            (a diverged member) is a failure.
        by: the column that groups members.
        loss_key: the column holding the relative loss.
        confidence: confidence of the Wilson interval.

    Returns:
        ``[{by: value, "successes", "trials", "rate", "low", "high"}, ...]`` sorted by ``value``
        (numbers where the column holds numbers).
    """
    check(threshold > 0 and math.isfinite(threshold), "the success threshold must be a positive number",
          threshold, "Use e.g. 0.005 (relative loss: loss / target variance).")
    groups: dict[Any, list[bool]] = {}
    seen: set[tuple[Any, Any]] = set()
    for i, row in enumerate(rows):
        missing = [k for k in (by, "seed", loss_key) if k not in row]
        check(not missing, f"row {i} lacks the columns {missing}", dict(row),
              f"Give every row '{by}', 'seed' and '{loss_key}' (train loss / target variance).")
        key = row[by]
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            key = int(key) if float(key) == int(float(key)) else float(key)
        pair = (key, str(row.get("width")), str(row["seed"]))  # one member: its width and seed
        check(pair not in seen, f"member ({by}={key}, width={row.get('width')}, seed={row['seed']}) appears "
              "twice", pair,
              "Pass one row per member: its final epoch (for members.csv, the rows of the last epoch).")
        seen.add(pair)
        loss = _number(row[loss_key], f"row {i}'s {loss_key}")
        groups.setdefault(key, []).append(math.isfinite(loss) and loss < threshold)
    check(bool(groups), "no rows to count", 0, "Pass the final row of every member.")
    out = []
    for key in sorted(groups, key=lambda k: (isinstance(k, str), k)):
        flags = groups[key]
        rate, low, high = success_interval(sum(flags), len(flags), confidence)
        out.append({by: key, "successes": sum(flags), "trials": len(flags), "rate": rate,
                    "low": low, "high": high})
    return out


def _at_least_one(p: float, count: int) -> float:
    """``1 - (1 - p) ** count``, exact at the ends and without cancellation for small ``p``."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    try:
        c = float(count)
    except OverflowError:
        return 1.0
    return -math.expm1(c * math.log1p(-p))


def multistart_prediction(p: float, n: int, r_star: int,
                          interval: tuple[float, float] | None = None) -> dict[str, Any]:
    """The multi-start lottery prediction of the success probability of a width-``n`` student.

    A width-``n`` one-hidden-layer student contains ``C(n, r*)`` subnetworks of the teacher's
    width ``r*`` (choices of ``r*`` of its hidden units). The multi-start lottery view says the
    wide student succeeds when at least one of them is a winning start, each winning with the
    probability ``p`` measured for a width-``r*`` student, so::

        P(success at width n) = 1 - (1 - p) ** C(n, r*)

    **Assumption:** the subnetworks win *independently* of each other, each with probability
    ``p``. They share units (and, through training, gradients), so the independence is a
    modelling assumption to be tested against the measured rates, not a theorem; with
    ``n = r*`` the prediction is ``p`` itself.

    Args:
        p: success rate measured at width ``r*`` (in ``[0, 1]``).
        n: the student's width (``>= r*``).
        r_star: the teacher's width ``r*`` (``>= 1``).
        interval: ``(low, high)`` of ``p`` (e.g. its Wilson interval from
            :func:`success_interval`); the map is increasing in ``p``, so the predicted interval
            is the map of the ends.

    Returns:
        ``{"width": n, "r_star", "subnetworks": C(n, r*), "p", "prediction", "low", "high"}``
        (``low`` and ``high`` are ``None`` without ``interval``).
    """
    check(isinstance(r_star, int) and r_star >= 1, "r_star must be an integer >= 1", r_star,
          "Pass the teacher's width, e.g. 4.")
    check(isinstance(n, int) and not isinstance(n, bool) and n >= r_star,
          "the student width n must be an integer >= r_star", (n, r_star),
          f"Predict for widths n >= {r_star}.")
    check(0.0 <= p <= 1.0, "the success rate p must lie in [0, 1]", p, "Pass a measured rate.")
    count = math.comb(n, r_star)
    out: dict[str, Any] = {"width": n, "r_star": r_star, "subnetworks": count, "p": float(p),
                           "prediction": _at_least_one(float(p), count), "low": None, "high": None}
    if interval is not None:
        low, high = (float(v) for v in interval)
        check(0.0 <= low <= p <= high <= 1.0, "the interval must satisfy 0 <= low <= p <= high <= 1",
              (low, p, high), "Pass p's interval, e.g. success_interval(successes, trials)[1:].")
        out["low"], out["high"] = _at_least_one(low, count), _at_least_one(high, count)
    return out
