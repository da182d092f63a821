"""The report's setup section: what was trained (data, label noise, model, widths, seeds,
optimizer, length, study callbacks) in one paragraph, read from a fit's resolved config, and the
commands that reproduce the sweep, the page and each figure."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from overparam_lit.studies.report.numbers import _number, _width, fmt, pct


def _shown(path: str | Path) -> str:
    """``path`` relative to the working folder when it lies below it, else as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def _short(class_path: Any) -> str:
    return str(class_path or "").rsplit(".", 1)[-1]


def _seq(values: list[Any]) -> str:
    values = [_width(v) for v in values]
    if len(values) <= 8:
        return ", ".join(values)
    return ", ".join(values[:4]) + ", …, " + ", ".join(values[-2:])


def _data_text(data: dict[str, Any]) -> str:
    name, a = _short(data.get("class_path")), dict(data.get("init_args") or {})
    if name == "MNIST1D":
        n = _number(a.get("num_samples", 5000)) or 5000
        split = _number(a.get("train_split", 0.8)) or 0.8
        train = int(n * split)
        text = f"MNIST-1D ({train:,} training and {int(n) - train:,} test examples)"
    elif name == "TeacherStudent":
        text = (f"a teacher-student task ({a.get('task', 'regression')}; {a.get('input_dim', '?')} "
                f"Gaussian inputs, a teacher MLP of width {a.get('teacher_width', '?')}; "
                f"{fmt(a.get('n_train'))} training and {fmt(a.get('n_test'))} test examples)")
    elif name == "Toy2D":
        text = f"the 2-D toy data set {a.get('dataset', a.get('name', ''))}".rstrip()
    else:
        text = name or "an unknown data set"
    if a.get("train_subset"):
        text += f", a training subset of {fmt(a['train_subset'])}"
    noise = _number(a.get("label_noise"))
    if noise:
        model = a.get("noise_model", "uniform_incorrect")
        how = {"uniform": "replaced by a random label (which may equal the true one)",
               "uniform_incorrect": "replaced by a random wrong label",
               "balanced_flip": "flipped, the same fraction in every class"}.get(str(model),
                                                                                  f"noised ({model})")
        text += f", with <b>{pct(noise)}</b> of the training labels {how}"
    else:
        text += ", with clean labels"
    if a.get("batch_size"):
        text += f"; batch size {fmt(a['batch_size'])}"
    return text


def _model_text(model: dict[str, Any]) -> str:
    name, a = _short(model.get("class_path")), dict(model.get("init_args") or {})
    details = []
    if "depth" in a:
        details.append(f"{a['depth']} hidden layer{'s' if a['depth'] != 1 else ''}")
    if a.get("activation"):
        details.append(str(a["activation"]))
    return f"{name} ({', '.join(details)})" if details else name


def _optimizer_text(model: dict[str, Any]) -> str:
    a = dict(model.get("init_args") or {})
    opt = a.get("optimizer") or {}
    if not isinstance(opt, dict) or not opt:
        return ""
    oa = dict(opt.get("init_args") or {})
    bits = [f"lr {fmt(oa['lr'])}"] if "lr" in oa else []
    for key in ("momentum", "weight_decay"):
        if _number(oa.get(key)):
            bits.append(f"{key.replace('_', ' ')} {fmt(oa[key])}")
    text = _short(opt.get("class_path")) + (f" ({', '.join(bits)})" if bits else "")
    sched = a.get("lr_scheduler")
    if isinstance(sched, dict) and sched.get("class_path"):
        text += f" with {_short(sched['class_path'])}"
    return text


def _length_text(trainer: dict[str, Any]) -> str:
    steps, epochs = _number(trainer.get("max_steps")), _number(trainer.get("max_epochs"))
    if steps is not None and steps > 0:
        return f"{int(steps):,} steps"
    if epochs is not None:
        return f"{int(epochs):,} epoch{'s' if epochs != 1 else ''}"
    return ""


def _callbacks_text(trainer: dict[str, Any]) -> str:
    cbs = trainer.get("callbacks") or []
    names = [_short(c.get("class_path")) for c in cbs if isinstance(c, dict) and c.get("class_path")]
    return ", ".join(dict.fromkeys(names))


def _values(rows: list[dict[str, str]], key: str) -> list[Any]:
    out = {_number(r.get(key)) for r in rows if _number(r.get(key)) is not None}
    return sorted(out)


def reproduce_commands(spec: dict[str, Any], source: Path, figures: list[str]) -> list[str]:
    """The commands that rebuild the sweep folder and this page (``sweep``, ``report``, ``plot``)."""
    opts = spec.get("options") or {}
    configs = opts.get("configs") or spec.get("configs") or ["CONFIG"]
    cmd = ["overparam-lit sweep", *[f"-c {_shown(c)}" for c in configs]]
    for key in ("set", "grid"):
        cmd += [f"--{key} {v}" for v in opts.get(key) or []]
    if opts.get("pack"):
        cmd.append(f"--pack {opts['pack']}")
    if opts.get("width_groups"):
        groups = opts["width_groups"]
        cmd.append(f"--width-groups '{groups if isinstance(groups, str) else json.dumps(groups)}'")
    if opts.get("name"):
        cmd.append(f"--name {opts['name']}")
    folder = _shown(source)
    lines = [" ".join(cmd) + f" --out {folder}", f"overparam-lit report {folder}"]
    lines += [f"overparam-lit plot {name} {folder}" for name in figures]
    return lines


def setup_html(spec: dict[str, Any], cfg: dict[str, Any], rows: list[dict[str, str]] | None,
               source: Path, figures: list[str]) -> str:
    """The setup paragraph (data, noise, model, widths, seeds, optimizer, length) and the commands
    that reproduce the sweep and this page."""
    model, data, trainer = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("trainer") or {}
    done = [r for r in rows or [] if r.get("status") == "done"] or list(rows or [])
    widths, seeds = _values(done, "width"), _values(done, "seed")
    fits = [f for f in spec.get("fits", []) if isinstance(f, dict)]
    if not widths:
        widths = sorted({w for f in fits for w in f.get("widths") or []})
    if not seeds:
        seeds = sorted({s for f in fits for s in f.get("seeds") or []})
    parts = []
    if model or data:
        parts.append(f"<b>{html.escape(_model_text(model))}</b> networks trained on {_data_text(data)}.")
    if widths:
        text = f"Widths {_seq(widths)} ({len(widths)} widths"
        params = _values(done, "num_params")
        if len(params) >= 2:
            text += f", {fmt(int(params[0]))} to {fmt(int(params[-1]))} parameters"
        parts.append(text + ")" + (f", each with seeds {_seq(seeds)}." if seeds else "."))
    elif seeds:
        parts.append(f"Seeds {_seq(seeds)}.")
    opt, length = _optimizer_text(model), _length_text(trainer)
    if opt or length:
        parts.append("Trained with " + html.escape(opt or "the config's optimizer")
                     + (f" for {length}" if length else "") + ".")
    cbs = _callbacks_text(trainer)
    if cbs:
        parts.append(f"Study callbacks: {html.escape(cbs)}.")
    stages = spec.get("stages") or []
    members = len(done)
    if fits:
        parts.append((f"{members:,} members in " if members else "")
                     + f"{len(fits):,} fit{'s' if len(fits) != 1 else ''}"
                     + (" (seeds and widths trained together as one stacked network per fit)"
                        if members > len(fits) else "")
                     + (f" in {len(stages)} stages ({html.escape(', '.join(map(str, stages)))})"
                        if len(stages) > 1 else "") + ".")
    fixed = (spec.get("options") or {}).get("set") or []
    if fixed:
        parts.append("Fixed arguments: "
                     + ", ".join(f"<code>{html.escape(str(s))}</code>" for s in fixed) + ".")
    cmds = "\n".join(html.escape(c) for c in reproduce_commands(spec, source, figures))
    return (f"<p id='setup-text'>{' '.join(parts)}</p>"
            f"<p>Reproduce the runs, this page and each figure:</p><pre><code>{cmds}</code></pre>")
