"""``ticket-perturb``: success of a ticket's students against the perturbation scale sigma of the rest
of the net, at two or more widths, with the rest removed or re-drawn as controls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from overparam_lit.escape.success import success_interval
from overparam_lit.studies.figures.common import finish, fit_folders, key_of, num, output_path, titled
from overparam_lit.studies.figures.success import DEFAULT_THRESHOLD, teacher_setup
from overparam_lit.studies.runs import imp_rows, ticket_rows
from overparam_lit.utils import check


def variant_rows(source: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per member and variant with ``width``, ``seed``, ``variant`` and ``relative_loss``
    (final train loss / target variance): ``dense`` (IMP level 0), ``removed`` (the ticket trained
    alone: TicketStart ``ticket``, else IMP level 1), ``redrawn`` (``perturb_rest`` without sigma)
    and ``sigma=<s>`` (``perturb_rest`` with sigma ``s``)."""
    rows: list[dict[str, Any]] = []
    teacher: dict[str, Any] | None = None
    for run in fit_folders(source, "imp"):
        setup = teacher_setup(run)
        check(teacher is None or setup == teacher, "the runs have different teachers", [teacher, setup],
              "Plot one teacher at a time.")
        teacher = setup
        found = [(r, {0: "dense", 1: "imp_level1"}.get(r["level"])) for r in imp_rows(run)]
        for r in ticket_rows(run):
            if r["mode"] == "ticket":
                found.append((r, "removed"))
            elif r["mode"] == "perturb_rest":
                found.append((r, "redrawn" if r.get("sigma") is None else f"sigma={float(r['sigma']):g}"))
        for r, variant in found:
            loss = num(r.get("train/loss"))
            if variant is None:
                continue
            check(loss is not None, "an IMP level or ticket result has no train/loss", r.get("run"),
                  "Evaluate the train split: eval_splits: [train, val, test] in IMP and TicketStart.")
            rows.append({"width": int(r["width"]), "seed": r["seed"], "variant": variant,
                         "relative_loss": loss / setup["target_variance"], "run": r.get("run")})
    check(bool(rows) and teacher is not None, "no IMP levels or ticket results of teacher-student runs found",
          str(source), "Run overparam-lit sweep -c configs/study_teacher_student_ticket_perturb.yaml first.")
    removed = {r["width"] for r in rows if r["variant"] == "removed"}
    for r in rows:  # IMP's level 1 is the ticket trained alone, unless TicketStart did that itself
        if r["variant"] == "imp_level1" and r["width"] not in removed:
            r["variant"] = "removed"
    return [r for r in rows if r["variant"] != "imp_level1"], teacher


def summarise(rows: list[dict[str, Any]], threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Successes (relative loss below ``threshold``), trials, rate and Wilson interval per width and
    variant; ``sigmas`` lists the perturbation scales found."""
    per_width: dict[str, dict[str, Any]] = {}
    for w in sorted({r["width"] for r in rows}):
        entry: dict[str, Any] = {"sigma": {}}
        for variant in sorted({r["variant"] for r in rows if r["width"] == w}):
            flags = [np.isfinite(r["relative_loss"]) and r["relative_loss"] < threshold
                     for r in rows if r["width"] == w and r["variant"] == variant]
            rate, low, high = success_interval(int(sum(flags)), len(flags))
            stats = {"successes": int(sum(flags)), "trials": len(flags), "rate": rate, "low": low,
                     "high": high}
            if variant.startswith("sigma="):
                entry["sigma"][key_of(float(variant.split("=", 1)[1]))] = stats
            else:
                entry[variant] = stats
        entry["sigma"] = dict(sorted(entry["sigma"].items(), key=lambda kv: float(kv[0])))
        per_width[key_of(w)] = entry
    sigmas = sorted({float(r["variant"].split("=", 1)[1]) for r in rows if r["variant"].startswith("sigma=")})
    return {"threshold": threshold, "sigmas": sigmas, "per_width": per_width}


def draw(summary: dict[str, Any], title: str) -> Any:
    """Success against sigma (symmetric-log axis), one colour per width; dashed: rest re-drawn,
    dotted: rest removed, thin solid: the dense students."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.6, 4.2))
    ax = fig.subplots()
    for i, (w, entry) in enumerate(summary["per_width"].items()):
        colour = f"C{i}"
        xs = [float(s) for s in entry["sigma"]]
        st = list(entry["sigma"].values())
        if xs:
            err = np.array([[s["rate"] - s["low"] for s in st], [s["high"] - s["rate"] for s in st]])
            ax.errorbar(xs, [s["rate"] for s in st], yerr=err, fmt="o-", capsize=3, color=colour,
                        label=f"width {w}: rest perturbed by sigma x std")
        for variant, style in (("redrawn", "--"), ("removed", ":"), ("dense", "-")):
            if variant in entry:
                v = entry[variant]
                ax.axhline(v["rate"], color=colour, ls=style, lw=1 if variant != "dense" else 0.6,
                           label=f"width {w}: {variant} ({v['successes']}/{v['trials']})")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=-0.02)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("sigma (perturbation of the rest, in units of the layer's weight std)")
    ax.set_ylabel(f"P(train loss / target variance < {summary['threshold']:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")
    return titled(fig, title, fontsize=10)


def figure(source: str | Path, out: str | Path | None = None, threshold: float = DEFAULT_THRESHOLD,
           title: str = "A ticket inside wider students, the rest perturbed") -> dict[str, Any]:
    """Success of teacher-student members started from their magnitude ticket with the rest of the
    net perturbed by ``sigma`` (``TicketStart`` ``perturb_rest``), removed or re-drawn, against
    sigma at every width under ``source``. Returns :func:`summarise`'s numbers with
    ``target_variance`` and ``r_star``."""
    rows, teacher = variant_rows(source)
    summary = {**summarise(rows, threshold), **teacher}
    return finish(draw(summary, title), summary, output_path(source, "ticket_perturb", out))
