"""``success``: teacher-student success probability against width, with Wilson intervals and the
multi-start lottery prediction ``1 - (1 - p)^C(n, r*)``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from overparam_lit.escape.success import multistart_prediction, success_rates
from overparam_lit.studies.figures.common import (
    data_init_args,
    finish,
    folder_of,
    member_table,
    num,
    output_path,
    titled,
)
from overparam_lit.utils import check

DEFAULT_THRESHOLD = 5e-3
"""A member succeeds when its final training loss is below this fraction of the target variance."""


@functools.lru_cache(maxsize=64)
def _variance(key: tuple[tuple[str, Any], ...]) -> float:
    from overparam_lit.escape.teacher import make_teacher_data

    args = dict(key)
    data = make_teacher_data(
        input_dim=int(args.get("input_dim", 20)), teacher_width=int(args.get("teacher_width", 32)),
        activation=str(args.get("teacher_activation", "relu")), n_train=int(args.get("n_train", 1000)),
        n_test=int(args.get("n_test", 1000)), data_seed=int(args.get("data_seed", 0)),
        teacher_depth=int(args.get("teacher_depth", 1)), out_dim=int(args.get("num_classes", 1)))
    return data.target_variance


def teacher_setup(run: str | Path) -> dict[str, Any]:
    """The teacher of a TeacherStudent run (``config.yaml``): ``r_star`` (its width) and the
    ``target_variance`` of the training targets (recomputed with
    :func:`overparam_lit.escape.teacher.make_teacher_data`, which draws the same data)."""
    class_path, args = data_init_args(run)
    check(class_path.endswith("TeacherStudent"), "the run is not a teacher-student fit",
          class_path or str(run),
          "Plot success for fits with data TeacherStudent (configs/study_teacher_student_success.yaml).")
    check(args.get("task", "regression") == "regression", "success needs a regression teacher",
          args.get("task"), "Use --data.task regression.")
    check(not args.get("target_noise") and not args.get("train_subset") and not args.get("val_size"),
          "the target variance is recomputed for noiseless targets on the whole training set only",
          {k: args.get(k) for k in ("target_noise", "train_subset", "val_size")},
          "Fit without target_noise, train_subset and val_size.")
    plain = tuple(sorted((k, v) for k, v in args.items() if isinstance(v, (int, float, str))))
    return {"r_star": int(args.get("teacher_width", 32)), "target_variance": _variance(plain)}


def relative_rows(source: str | Path, rows: list[dict[str, Any]], loss_key: str = "train/loss"
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``rows`` with ``relative_loss`` (``loss_key`` / the target variance of the row's run), and
    the teacher (``r_star``, ``target_variance``; one teacher for all rows)."""
    teachers, out = {}, []
    for r in rows:
        folder = folder_of(r, source)
        if str(folder) not in teachers:
            teachers[str(folder)] = teacher_setup(folder)
        t = teachers[str(folder)]
        loss = num(r.get(loss_key))
        out.append({**r, "relative_loss": float("nan") if loss is None else loss / t["target_variance"]})
    distinct = {(t["r_star"], round(t["target_variance"], 12)) for t in teachers.values()}
    check(len(distinct) == 1, "the runs have different teachers", sorted(distinct),
          "Plot one teacher at a time (one data setting per sweep).")
    return out, next(iter(teachers.values()))


def summarise(rows: list[dict[str, Any]], r_star: int, threshold: float = DEFAULT_THRESHOLD,
              confidence: float = 0.95) -> dict[str, Any]:
    """Success rates per width (:func:`overparam_lit.escape.success.success_rates` on
    ``relative_loss``) and, from the rate at width ``r_star``, the multi-start prediction with its
    interval for every width ``>= r_star``
    (:func:`overparam_lit.escape.success.multistart_prediction`)."""
    rates = success_rates([{"width": r["width"], "seed": r["seed"], "relative_loss": r["relative_loss"]}
                           for r in rows], threshold, by="width", confidence=confidence)
    base = next((r for r in rates if r["width"] == r_star), None)
    per_width = []
    for r in rates:
        entry = dict(r)
        if base is not None and isinstance(r["width"], int) and r["width"] >= r_star:
            pred = multistart_prediction(base["rate"], r["width"], r_star, (base["low"], base["high"]))
            entry.update(subnetworks=pred["subnetworks"], prediction=pred["prediction"],
                         prediction_low=pred["low"], prediction_high=pred["high"])
        per_width.append(entry)
    return {"threshold": threshold, "r_star": r_star, "confidence": confidence,
            "p_at_r_star": None if base is None else base["rate"], "per_width": per_width}


def draw(summary: dict[str, Any], title: str) -> Any:
    """Measured rates with Wilson intervals, and the prediction with its band."""
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.2, 4.0))
    ax = fig.subplots()
    rows = summary["per_width"]
    w = np.array([r["width"] for r in rows], dtype=float)
    rate = np.array([r["rate"] for r in rows])
    err = np.array([[r["rate"] - r["low"] for r in rows], [r["high"] - r["rate"] for r in rows]])
    ax.errorbar(w, rate, yerr=err, fmt="o", capsize=3, color="C0",
                label=f"measured ({int(summary['confidence'] * 100)}% Wilson interval)")
    for r in rows:
        ax.annotate(f"{r['successes']}/{r['trials']}", (r["width"], r["rate"]), textcoords="offset points",
                    xytext=(6, -10), fontsize=7)
    pred = [r for r in rows if r.get("prediction") is not None]
    if pred:
        pw = np.array([r["width"] for r in pred], dtype=float)
        ax.plot(pw, [r["prediction"] for r in pred], "s--", color="C3", ms=4,
                label=f"multi-start lottery 1 - (1 - p)^C(n, {summary['r_star']})")
        ax.fill_between(pw, [r["prediction_low"] for r in pred], [r["prediction_high"] for r in pred],
                        color="C3", alpha=0.15, lw=0)
    ax.axvline(summary["r_star"], color="grey", lw=0.8, ls=":",
               label=f"teacher width r* = {summary['r_star']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(w, [f"{x:g}" for x in w])
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("student width n")
    ax.set_ylabel(f"P(train loss / target variance < {summary['threshold']:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return titled(fig, title, fontsize=10)


def figure(source: str | Path, out: str | Path | None = None, threshold: float = DEFAULT_THRESHOLD,
           r_star: int | None = None, confidence: float = 0.95,
           title: str = "Teacher-student success against width") -> dict[str, Any]:
    """Success probability of teacher-student members (final train loss / target variance below
    ``threshold``) against width, with Wilson intervals, overlaid with the multi-start lottery
    prediction from the rate at the teacher's width ``r_star`` (default: the data's
    ``teacher_width``). Returns :func:`summarise`'s numbers with ``target_variance``."""
    rows, teacher = relative_rows(source, member_table(source))
    summary = summarise(rows, r_star or teacher["r_star"], threshold, confidence)
    summary["target_variance"] = teacher["target_variance"]
    return finish(draw(summary, title), summary, output_path(source, "success", out))
