"""``overparam-lit export``: one member of a stacked fit as a standalone checkpoint of its family.

The exported file is an ordinary Lightning checkpoint of the single-model class (``MLP``,
``CNN``, ...) at the member's own width: ``MLP.load_from_checkpoint(path)`` loads it, and it
computes exactly what the member computed in the fit (its weights and BatchNorm statistics,
cropped out of the stack; pruned weights stay zero).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import lightning as L

from overparam_lit.models.stack import leading, member_grid, parse_seeds, parse_widths
from overparam_lit.runfolder import RunFolder, read_checkpoint
from overparam_lit.utils import ConfigError, OneLineParser, atomic_save, check, check_out_file

MEMBER_KEYS = ("seeds", "widths")


def _load(path: str | Path) -> dict[str, Any]:
    ckpt = read_checkpoint(path, "the checkpoint to export", use="export",
                           otherwise="give a members fit's checkpoint, e.g. runs/<run>/checkpoints/last.ckpt")
    check("hyper_parameters" in ckpt, "the file is not a checkpoint of an overparam-lit model", str(path),
          "Give a .ckpt from a run folder's checkpoints/.")
    return ckpt


def _class(path: str) -> type[L.LightningModule]:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_output(out: str | Path, ckpt_path: str | Path) -> None:
    """Refuse an ``out`` that cannot be written, or that would replace a run's checkpoint: the
    checkpoint being exported, or any file in a run folder's ``checkpoints/`` (a resume would
    take a member's checkpoint there for the fit's own)."""
    fix = "Give --out a new file outside the run's checkpoints/ folder, e.g. --out member3.ckpt."
    out = check_out_file(out, fix)
    parent = out.parent if str(out.parent) else Path(".")
    same = out.exists() and Path(ckpt_path).exists() and os.path.samefile(out, ckpt_path)
    check(not same, "--out is the checkpoint being exported; writing it would replace the fit's own "
          "checkpoint", str(out), fix)
    run = RunFolder(parent.parent)
    inside = parent.resolve() == run.checkpoints.resolve() and run.holds_run()
    check(not inside, "--out lies in a run folder's checkpoints/, where it would replace or stand beside "
          "the run's own checkpoints (a resume would pick it up)", str(out), fix)


def export_member(ckpt_path: str | Path, member: int, out: str | Path) -> Path:
    """Write member ``member`` of a members checkpoint as a single-model checkpoint ``out``.

    Returns the path written. The checkpoint's ``member`` entry records the member's index, seed
    and width and the source checkpoint.
    """
    ckpt = _load(ckpt_path)
    hp = dict(ckpt["hyper_parameters"])
    check(hp.get("seeds") is not None or hp.get("widths") is not None,
          "the checkpoint is a single model, not a members fit", str(ckpt_path),
          "It already loads into its class; export is for fits with --model.seeds or --model.widths.")
    class_path = hp.get("_class_path") or ckpt.get("model_class")
    check(bool(class_path), "the checkpoint does not name its model class", str(ckpt_path),
          "Export checkpoints written by overparam-lit fit (or by an OverparamModule).")
    members = member_grid(parse_seeds(hp["seeds"]) or [0], parse_widths(hp["widths"]) or [hp["width"]])
    check(isinstance(member, int) and 0 <= member < len(members), "member index out of range", member,
          f"The fit has {len(members)} members: use 0..{len(members) - 1} (members.csv lists them).")
    m = members[member]
    single_hp = {k: v for k, v in hp.items() if k not in MEMBER_KEYS}
    single_hp["width"] = m.width
    cls = _class(class_path)
    init = {k: v for k, v in single_hp.items() if not k.startswith("_")}
    single = cls(**init)
    shapes = {f"net.{n}": tuple(t.shape) for n, t in
              {**dict(single.net.named_parameters()), **dict(single.net.named_buffers())}.items()}
    # members of one width keep their whole tensors (a widened stack grows the single model when it
    # loads); a padded member is cut to its own width
    padded = len({x.width for x in members}) > 1
    state = {}
    for key, shape in shapes.items():
        check(key in ckpt["state_dict"], "the checkpoint lacks a tensor of the member's network", key,
              "Export from a checkpoint of the same model class.")
        t = ckpt["state_dict"][key][member]
        state[key] = (t[leading(shape)] if padded else t).clone()
    out = Path(out)
    check_output(out, ckpt_path)
    atomic_save({
        "state_dict": state,
        "hyper_parameters": single_hp,
        "hparams_name": "kwargs",
        "pytorch-lightning_version": ckpt.get("pytorch-lightning_version", L.__version__),
        "epoch": ckpt.get("epoch", 0),
        "global_step": ckpt.get("global_step", 0),
        "model_width": m.width if padded else ckpt.get("model_width", m.width),
        "member": {"index": m.index, "seed": m.seed, "width": m.width, "source": str(ckpt_path)},
    }, out)
    return out


EXAMPLE = "overparam-lit export runs/x/checkpoints/last.ckpt --member 3 --out member3.ckpt"


def main(argv: list[str]) -> None:
    """``overparam-lit export CKPT --member I --out FILE``."""
    parser = OneLineParser(
        example=EXAMPLE,
        prog="overparam-lit export",
        description="Write one member of a members fit (--model.seeds / --model.widths) as a "
                    "standalone checkpoint of its model class, at its own width.",
        epilog="Example: overparam-lit export runs/x/checkpoints/last.ckpt --member 3 --out member3.ckpt; "
               "then MLP.load_from_checkpoint('member3.ckpt') in Python, or "
               "overparam-lit test --model MLP --ckpt_path member3.ckpt ...",
    )
    parser.add_argument("ckpt", help="checkpoint of a members fit")
    parser.add_argument("--member", type=int, help="member index (see members.csv)")
    parser.add_argument("--out", help="file to write")
    args = parser.parse_args(argv)
    for option in ("member", "out"):
        if getattr(args, option) is None:
            given = " ".join(argv)
            raise ConfigError(f"--{option} is missing (got `overparam-lit export {given}`). Name the "
                              f"member (its index in the fit's members.csv) and the file to write: {EXAMPLE}")
    check_output(args.out, args.ckpt)
    path = export_member(args.ckpt, args.member, args.out)
    print(f"wrote {path}")
