"""``double-descent``: train, clean test and noisy test error against width, mean and band over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.studies.figures.common import (
    describe,
    finish,
    key_of,
    member_table,
    num,
    output_path,
    titled,
)
from overparam_lit.studies.results import group_curves
from overparam_lit.utils import check


def _error(key: str) -> Any:
    return lambda r: None if num(r.get(key)) is None else 1.0 - float(r[key])


def second_peak(widths: np.ndarray, err: np.ndarray, threshold_width: float | None) -> int:
    """Index of the double-descent peak: the interior local maximum of the test error nearest the
    interpolation threshold in log width (the largest one without a threshold); the global maximum
    when there is no interior maximum. The narrowest nets' error is high too (the classical regime),
    so the global maximum is not the peak in question."""
    inner = [i for i in range(1, len(err) - 1) if err[i] > err[i - 1] and err[i] >= err[i + 1]]
    if not inner:
        return int(np.argmax(err))
    if threshold_width is None:
        return max(inner, key=lambda i: err[i])
    return min(inner, key=lambda i: (abs(np.log(widths[i]) - np.log(threshold_width)), -err[i]))


def summarise(rows: list[dict[str, Any]], threshold: float = 0.01) -> dict[str, Any]:
    """Per-width means over seeds, the interpolation threshold and the test-error peak.

    Args:
        rows: one row per member with ``width``, ``train/acc`` (on the labels trained on) and
            ``test/acc`` / ``test/acc_noisy`` (or, without a test split, ``val/acc``).
        threshold: a width interpolates when its mean train error is at most this.

    Returns:
        ``peak_width``, ``peak_test_error`` (the local maximum of the mean clean test error nearest
        the interpolation threshold), ``interpolation_width`` (the first width whose mean train error
        is ``<= threshold``, ``None`` if none), ``min_before_peak_width`` / ``_test_error``,
        ``last_width_test_error``, ``test_split`` and ``per_width`` (``train_error``, ``test_error``,
        ``test_error_noisy``, ``num_params``, ``seeds``), plus the curves for drawing.
    """
    test = "test" if any(num(r.get("test/acc")) is not None for r in rows) else "val"
    curves = {
        "train_error": group_curves(rows, "width", _error("train/acc")).get(None),
        "test_error": group_curves(rows, "width", _error(f"{test}/acc")).get(None),
        "test_error_noisy": group_curves(rows, "width", _error(f"{test}/acc_noisy")).get(None),
        "num_params": group_curves(rows, "width", lambda r: num(r.get("num_params"))).get(None),
    }
    check(curves["train_error"] is not None and curves["test_error"] is not None,
          "no member has train/acc and test/acc (or val/acc)", len(rows),
          "Plot a classification sweep that finished (overparam-lit sweep ... first).")
    tr, te = curves["train_error"], curves["test_error"]
    fitted = [w for w, e in zip(tr["x"], tr["mean"], strict=True) if e <= threshold]
    thr = float(fitted[0]) if fitted else None
    peak = second_peak(te["x"], te["mean"], thr)
    per_width = {}
    for i, w in enumerate(te["x"]):
        entry: dict[str, Any] = {"test_error": float(te["mean"][i]), "seeds": int(te["n"][i])}
        for name in ("train_error", "test_error_noisy", "num_params"):
            c = curves[name]
            if c is not None and w in c["x"]:
                entry[name] = float(c["mean"][list(c["x"]).index(w)])
        per_width[key_of(w)] = entry
    left = te["mean"][: peak + 1]
    return {"test_split": test, "threshold": threshold, "interpolation_width": thr,
            "peak_width": float(te["x"][peak]), "peak_test_error": float(te["mean"][peak]),
            "min_before_peak_width": float(te["x"][int(np.argmin(left))]),
            "min_before_peak_test_error": float(left.min()),
            "last_width": float(te["x"][-1]), "last_width_test_error": float(te["mean"][-1]),
            "seeds": int(te["n"].max()), "per_width": per_width, "curves": curves}


def draw(summary: dict[str, Any], title: str) -> Any:
    """The figure of :func:`summarise`'s numbers."""
    from matplotlib.figure import Figure

    c = summary["curves"]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    styles = (("train_error", "train error (labels trained on)", "C0", "o"),
              ("test_error", "test error (clean labels)", "C3", "s"),
              ("test_error_noisy", "test error (noisy labels)", "C1", "^"))
    for name, label, color, marker in styles:
        if c[name] is None:
            continue
        ax.plot(c[name]["x"], c[name]["mean"], marker=marker, color=color, label=label, ms=4)
        if (c[name]["n"] > 1).any():
            ax.fill_between(c[name]["x"], c[name]["lo"], c[name]["hi"], color=color, alpha=0.2, lw=0)
    ax.annotate(f"peak {summary['peak_test_error']:.3f}", (summary["peak_width"], summary["peak_test_error"]),
                textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7, color="C3")
    if summary["interpolation_width"] is not None:
        ax.axvline(summary["interpolation_width"], color="grey", ls="--", lw=1,
                   label=f"interpolation threshold (train error <= {summary['threshold']:g})")
    ax.set_xscale("log")
    ax.set_xlabel("width")
    ax.set_ylabel("error")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    params = c["num_params"]
    if params is not None and len(params["x"]) > 1:
        lw, lp = np.log(params["x"]), np.log(params["mean"])

        def to_params(w: np.ndarray) -> np.ndarray:
            return np.exp(np.interp(np.log(np.clip(w, 1e-12, None)), lw, lp))

        def to_width(p: np.ndarray) -> np.ndarray:
            return np.exp(np.interp(np.log(np.clip(p, 1e-12, None)), lp, lw))

        top = ax.secondary_xaxis("top", functions=(to_params, to_width))
        top.set_xlabel("parameters")
    return titled(fig, f"{title}\nmean of {summary['seeds']} seed(s), band: min-max over seeds", fontsize=9)


def figure(source: str | Path, out: str | Path | None = None, threshold: float = 0.01,
           title: str = "Double descent in width") -> dict[str, Any]:
    """Double descent of a width sweep: train error (on the labels trained on), clean test error
    and noisy test error against width, mean over seeds with a min-max band; the top axis gives
    the parameter count and a dashed line the interpolation threshold (first width with mean train
    error ``<= threshold``). Returns :func:`summarise`'s numbers without the curves."""
    title = f"{title}: {describe(source)}" if describe(source) else title
    summary = summarise(member_table(source), threshold)
    fig = draw(summary, title)
    small = {k: v for k, v in summary.items() if k != "curves"}
    return finish(fig, small, output_path(source, "double_descent", out))
