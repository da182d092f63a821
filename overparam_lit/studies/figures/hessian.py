"""``hessian``: the Hessian index (negative fraction) against the training loss over a fit's probes,
and the number of outliers above the bulk against the number of classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.studies.figures.common import describe, finish, fit_folders, output_path, titled
from overparam_lit.studies.runs import hessian_rows
from overparam_lit.utils import check


def outliers(top: np.ndarray) -> int:
    """Outliers above the bulk among the top-k eigenvalues: the last ratio gap of at least 1.3
    (:func:`overparam_lit.curvature.outliers_above_gap`)."""
    from overparam_lit.curvature import outliers_above_gap

    return outliers_above_gap(np.asarray(top, dtype=float))


def outliers_largest_gap(top: np.ndarray) -> int:
    """Outliers by the largest ratio gap among the top-k (:func:`overparam_lit.curvature.count_outliers`
    with at most k - 1)."""
    from overparam_lit.curvature import count_outliers

    top = np.asarray(top, dtype=float)
    return int(count_outliers(top, max_count=max(1, top.size - 1))) if top.size else 0


OUTLIER_RULE = "last ratio gap lambda_m / lambda_(m+1) >= 1.3 among the top k (0 without one)"


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation of the finite pairs (``None`` with fewer than 3 or no spread)."""
    from scipy.stats import spearmanr

    pts = [(a, b) for a, b in zip(x, y, strict=True) if np.isfinite(a) and np.isfinite(b)]
    if len(pts) < 3 or len({a for a, _ in pts}) < 2 or len({b for _, b in pts}) < 2:
        return None
    return float(spearmanr([a for a, _ in pts], [b for _, b in pts]).statistic)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers of the figure from :func:`~overparam_lit.studies.runs.hessian_rows` of one or more runs.

    Returns:
        ``spearman`` (rank correlation of loss and negative fraction over every probe of every
        member), ``spearman_per_member``, ``negative_fraction_first`` / ``_last`` and
        ``loss_first`` / ``_last`` (member means at the first and last probe), ``outliers_last``
        (mean outliers at each member's last probe), ``outliers_median_late`` (median over the
        later half of every member's probes), ``num_classes``, ``outliers_by_classes`` (per number
        of classes: mean outliers at the last probe), ``outliers_by_classes_largest_gap`` (the
        same by the largest gap), ``by_classes`` (per number of classes: ``last`` and ``max``
        (over each member's probes) outlier counts per member, ``loss_at_max``, ``loss_last``),
        ``outlier_rule``, ``probes`` (per member: step, loss, negative fraction, outliers,
        outliers_largest_gap), ``loss_source`` and ``members``.
    """
    check(bool(rows), "no Hessian probes found", 0,
          "Fit with -c callbacks/hessian.yaml (overparam-lit sweep -c configs/study_mnist1d_hessian.yaml).")
    by_member: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_member.setdefault((r["run"], int(r["member"])), []).append(r)
    probes, per_member, firsts, lasts, late, by_classes = [], [], [], [], [], {}
    for (run, member), rs in sorted(by_member.items()):
        rs = sorted(rs, key=lambda r: r["step"])
        series = [{"step": r["step"], "loss": r.get("loss", float("nan")),
                   "negative_fraction": r.get("negative_fraction", float("nan")),
                   "outliers": outliers(r["top"]), "outliers_largest_gap": outliers_largest_gap(r["top"]),
                   "lambda_max": r.get("lambda_max")} for r in rs]
        probes.append({"run": run, "member": member, "seed": rs[0].get("seed"), "width": rs[0].get("width"),
                       "num_classes": rs[0].get("num_classes"), "probes": series})
        per_member.append(spearman([p["loss"] for p in series], [p["negative_fraction"] for p in series]))
        firsts.append(series[0])
        lasts.append(series[-1])
        late += [p["outliers"] for p in series[len(series) // 2:]]
        c = rs[0].get("num_classes")
        if c is not None:
            peak = max(series, key=lambda p: (p["outliers"], -p["step"]))
            by_classes.setdefault(int(c), []).append(
                {"last": series[-1]["outliers"], "last_largest_gap": series[-1]["outliers_largest_gap"],
                 "max": peak["outliers"], "loss_at_max": peak["loss"], "step_at_max": peak["step"],
                 "loss_last": series[-1]["loss"]})
    all_loss = [p["loss"] for m in probes for p in m["probes"]]
    all_neg = [p["negative_fraction"] for m in probes for p in m["probes"]]
    classes = sorted(by_classes)
    finite = [v for v in per_member if v is not None]

    def mean_of(items: list[dict[str, Any]], key: str) -> float:
        return float(np.mean([m[key] for m in items]))

    def mean(key: str, items: list[dict[str, Any]]) -> float | None:
        vals = [float(p[key]) for p in items if p.get(key) is not None and np.isfinite(p[key])]
        return float(np.mean(vals)) if vals else None

    return {
        "spearman": spearman(all_loss, all_neg),
        "spearman_per_member": per_member,
        "spearman_mean": float(np.mean(finite)) if finite else None,
        "negative_fraction_first": mean("negative_fraction", firsts),
        "negative_fraction_last": mean("negative_fraction", lasts),
        "loss_first": mean("loss", firsts), "loss_last": mean("loss", lasts),
        "outliers_last": mean("outliers", lasts),
        "outliers_median_late": float(np.median(late)) if late else None,
        "num_classes": classes[0] if len(classes) == 1 else classes,
        "outliers_by_classes": {str(c): mean_of(by_classes[c], "last") for c in classes},
        "outliers_by_classes_largest_gap": {str(c): mean_of(by_classes[c], "last_largest_gap")
                                            for c in classes},
        "by_classes": {str(c): {key: [m[key] for m in by_classes[c]] for key in by_classes[c][0]}
                       for c in classes},
        "outlier_rule": OUTLIER_RULE,
        "loss_source": sorted({r.get("loss_source", "none") for r in rows}),
        "members": len(probes), "probes": probes,
    }


def draw(summary: dict[str, Any], rows: list[dict[str, Any]], title: str) -> Any:
    """Four panels: negative fraction against loss; the top eigenvalues at the last probe; outliers
    against the number of classes (every member at the last probe, and its most over training);
    outliers against the training loss over the probes, per number of classes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 3.8))
    ax = fig.subplots(1, 4)
    for i, m in enumerate(summary["probes"]):
        ps = m["probes"]
        ax[0].plot([p["loss"] for p in ps], [p["negative_fraction"] for p in ps], "o-", ms=3, lw=0.8,
                   color=f"C{i % 10}", label=f"seed {m['seed']}, width {m['width']}" if i < 8 else None)
    rho = summary["spearman"]
    losses = [p["loss"] for m in summary["probes"] for p in m["probes"]
              if np.isfinite(p["loss"]) and p["loss"] > 0]
    if losses and max(losses) > 10 * min(losses):
        ax[0].set_xscale("log")
    ax[0].set_xlabel("training loss at the probe")
    ax[0].set_ylabel("negative fraction (Hessian index)")
    ax[0].set_title("index against loss" + (f" (Spearman {rho:.2f})" if rho is not None else ""), fontsize=9)
    ax[0].legend(fontsize=6)
    last = {}
    for r in rows:
        key = (r["run"], r["member"])
        if key not in last or r["step"] > last[key]["step"]:
            last[key] = r
    for i, r in enumerate(list(last.values())[:8]):
        top = np.sort(np.asarray(r["top"], dtype=float))[::-1]
        ax[1].semilogy(np.arange(1, top.size + 1), np.maximum(top, 1e-8), "o-", ms=3, lw=0.6, color=f"C{i}")
        k = outliers(top)
        ax[1].axvline(k + 0.5, color=f"C{i}", lw=0.6, ls=":")
    ax[1].set_xlabel("index i")
    ax[1].set_ylabel("lambda_i at the last probe")
    ax[1].set_title(f"top eigenvalues; dotted: outliers end ({summary['outliers_last']:.1f} on average)",
                    fontsize=9)
    by = {int(c): v for c, v in summary.get("by_classes", {}).items()}
    if by:
        cs = np.array(sorted(by))
        for j, c in enumerate(cs):
            last, most = np.asarray(by[c]["last"], float), np.asarray(by[c]["max"], float)
            dx = np.linspace(-0.15, 0.15, last.size) if last.size > 1 else np.zeros(1)
            ax[2].plot(c + dx, last, "s", ms=6, color="C3", label="last probe" if j == 0 else None)
            ax[2].plot(c + dx, most, "o", ms=6, mfc="none", color="C0",
                       label="most over training" if j == 0 else None)
            gap = np.asarray(by[c]["last_largest_gap"], float)
            ax[2].plot(c + dx, gap, "x", ms=5, color="0.4",
                       label="last probe, largest gap" if j == 0 else None)
        span = np.array([max(1, cs.min() - 1), cs.max() + 1])
        ax[2].plot(span, span, "k--", lw=0.8, label="C")
        ax[2].plot(span, span - 1, "k:", lw=0.8, label="C - 1")
        ax[2].legend(fontsize=7)
    ax[2].set_xlabel("number of classes C")
    ax[2].set_ylabel("outliers above the bulk")
    ax[2].set_title("outliers against the number of classes", fontsize=9)
    classes = sorted({m["num_classes"] for m in summary["probes"] if m.get("num_classes") is not None})
    labelled: set[Any] = set()
    for m in summary["probes"]:
        ps = [p for p in m["probes"] if np.isfinite(p["loss"]) and p["loss"] > 0]
        c = m.get("num_classes")
        i = classes.index(c) if c in classes else 0
        ax[3].plot([p["loss"] for p in ps], [p["outliers"] for p in ps], "o-", ms=3, lw=0.7,
                   color=f"C{i % 10}", label=f"C = {c}" if c is not None and c not in labelled else None)
        labelled.add(c)
    ax[3].set_xscale("log")
    ax[3].invert_xaxis()
    ax[3].set_xlabel("training loss at the probe (training goes right)")
    ax[3].set_ylabel("outliers above the bulk")
    ax[3].set_title("outliers over training (last gap >= 1.3)", fontsize=9)
    if classes:
        ax[3].legend(fontsize=7)
    return titled(fig, title, ax, fontsize=10)


def figure(source: str | Path, out: str | Path | None = None,
           title: str = "Hessian of the training loss during training") -> dict[str, Any]:
    """The Hessian index (negative fraction) against the training loss over every probe of every
    fit (and member) under ``source``, with Spearman's correlation, and the number of outliers above
    the bulk (:func:`overparam_lit.curvature.outliers_above_gap`) against the number of classes and
    over training.
    Returns :func:`summarise`'s numbers (``probes`` holds every member's series)."""
    title = f"{title}: {describe(source)}" if describe(source) else title
    rows = [r for run in fit_folders(source, "hessian") for r in hessian_rows(run)]
    summary = summarise(rows)
    return finish(draw(summary, rows, title), summary, output_path(source, "hessian", out))
