"""``widen``: the widening escape: loss and lambda_min before and after a ``Widen`` step, the
widened students against their narrow controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.studies.figures.common import finish, fit_folders, num, output_path, titled
from overparam_lit.studies.results import member_finals
from overparam_lit.studies.runs import epoch_losses, hessian_rows, widen_record
from overparam_lit.utils import check


def _lambda_min(row: dict[str, Any] | None) -> float | None:
    if row is None:
        return None
    value = num(row.get("lambda_min"))
    return value if value is not None else num(row.get("lambda_min_bound"))


def _probe(rows: list[dict[str, Any]], member: int, step: int | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return next((r for r in rows if int(r["member"]) == member and r["step"] == step), None)


def summarise(widened: list[Path], controls: list[Path], escape_factor: float = 0.5) -> dict[str, Any]:
    """Per member of the widened runs (matched to the control member with the same seed): the
    training loss before and after the widening (``widen.json``), ``lambda_min`` of the probes just
    before and after it (the resolved value, else its upper bound ``lambda_min_bound``), and the final
    training loss of the widened member and of its control. A member *escapes* when its final loss is
    below ``escape_factor`` times its control's.

    Returns:
        ``step``, ``method``, ``width_before``, ``width_after``, ``members``, means of
        ``loss_before`` / ``loss_after`` / ``lambda_min_before`` / ``lambda_min_after``,
        ``negative_curvature_after`` (members whose bound after the widening is negative),
        medians ``final_loss_widened`` / ``final_loss_control``, ``escaped`` and ``per_member``.
    """
    check(bool(widened), "no run with a widen/widen.json found", 0,
          "Fit with -c callbacks/widen.yaml (see configs/study_teacher_student_widen.yaml).")
    control_final = {}
    for run in controls:
        for m in member_finals(run):
            control_final[m["seed"]] = num(m.get("train/loss"))
    per_member, head = [], None
    for run in widened:
        record = widen_record(run)
        assert record is not None
        head = head or record
        probes = hessian_rows(run)
        finals = {m["member"]: m for m in member_finals(run)}
        for i, m in enumerate(record["members"]):
            before = _probe(probes, i, record["probes"]["before"])
            after = _probe(probes, i, record["probes"]["after"])
            final = num(finals.get(i, {}).get("train/loss"))
            ctrl = control_final.get(m.get("seed"))
            per_member.append({
                "run": str(run), "member": i, "seed": m.get("seed"), "loss_before": m["loss_before"],
                "loss_after": m["loss_after"], "lambda_min_before": _lambda_min(before),
                "lambda_min_after": _lambda_min(after),
                "lambda_min_bound_after": None if after is None else num(after.get("lambda_min_bound")),
                "final_loss": final, "control_final_loss": ctrl,
                "escaped": None if final is None or ctrl is None else bool(final < escape_factor * ctrl)})

    def mean(key: str) -> float | None:
        vals = [p[key] for p in per_member if p[key] is not None]
        return float(np.mean(vals)) if vals else None

    def median(key: str) -> float | None:
        vals = [p[key] for p in per_member if p[key] is not None]
        return float(np.median(vals)) if vals else None

    assert head is not None
    return {
        "step": head["step"], "method": head["method"], "width_before": head["width_before"],
        "width_after": head["width_after"], "members": len(per_member),
        "loss_before": mean("loss_before"), "loss_after": mean("loss_after"),
        "max_abs_loss_change": float(max(abs(p["loss_after"] - p["loss_before"]) for p in per_member)),
        "lambda_min_before": mean("lambda_min_before"), "lambda_min_after": mean("lambda_min_after"),
        "negative_curvature_after": sum(1 for p in per_member if (p["lambda_min_bound_after"] or 0.0) < 0),
        "final_loss_widened": median("final_loss"), "final_loss_control": median("control_final_loss"),
        "escape_factor": escape_factor, "escaped": sum(1 for p in per_member if p["escaped"]),
        "compared": sum(1 for p in per_member if p["escaped"] is not None), "per_member": per_member,
    }


def draw(summary: dict[str, Any], widened: list[Path], controls: list[Path], title: str) -> Any:
    """Left: training loss against step, widened (solid) and control (dashed) members; right:
    lambda_min of every probe against step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.0))
    ax = fig.subplots(1, 2)
    for runs, style, label in ((widened, "-", "widened"), (controls, "--", "narrow control")):
        for run in runs:
            for member, (steps, loss) in sorted(epoch_losses(run).items())[:8]:
                ax[0].plot(steps, loss, style, lw=0.9, color=f"C{member % 10}",
                           label=label if member == 0 else None)
            probes = hessian_rows(run)
            for member in sorted({int(r["member"]) for r in probes})[:8]:
                pts = [(r["step"], _lambda_min(r)) for r in probes if int(r["member"]) == member]
                pts = [(s, v) for s, v in pts if v is not None]
                if pts:
                    ax[1].plot(*zip(*pts, strict=True), style + "o", ms=3, lw=0.8, color=f"C{member % 10}",
                               label=label if member == 0 else None)
    for a in ax:
        a.axvline(summary["step"], color="grey", lw=1, ls=":")
        a.set_xlabel("training step (dotted: the widening)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("training loss (epoch mean)")
    ax[0].set_title(f"escaped: {summary['escaped']}/{summary['compared']} (final loss < "
                    f"{summary['escape_factor']:g} x control's)", fontsize=9)
    ax[1].set_yscale("symlog", linthresh=1e-6)
    ax[1].set_ylabel("lambda_min (or its upper bound)")
    lo, hi = summary["lambda_min_before"], summary["lambda_min_after"]
    ax[1].set_title(f"lambda_min (member mean): {lo if lo is None else f'{lo:.2e}'} before, "
                    f"{hi if hi is None else f'{hi:.2e}'} after the widening", fontsize=9)
    return titled(fig, f"{title}: width {summary['width_before']} -> {summary['width_after']} "
                 f"({summary['method']}) at step {summary['step']}", fontsize=10)


def figure(source: str | Path, out: str | Path | None = None, escape_factor: float = 0.5,
           title: str = "Escape by widening") -> dict[str, Any]:
    """The widened runs under ``source`` (those with ``widen/widen.json``) against the narrow
    controls (the other runs with Hessian probes): loss and ``lambda_min`` before and after the
    widening, and the training loss over the whole fit. Returns :func:`summarise`'s numbers."""
    runs = fit_folders(source)
    widened = [r for r in runs if widen_record(r) is not None]
    controls = [r for r in runs if r not in widened]
    summary = summarise(widened, controls, escape_factor)
    return finish(draw(summary, widened, controls, title), summary, output_path(source, "widen", out))
