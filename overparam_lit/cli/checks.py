"""Checks of a fit's config before anything is instantiated or written: trainer devices and
accelerator, epochs, seed, learning rate, the checkpoint given with ``--ckpt_path`` and the run
folder. Each refusal is a :class:`~overparam_lit.utils.ConfigError` (one paragraph, exit code 2).
No Lightning import: the checks read plain config values."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from overparam_lit import registry
from overparam_lit.models.stack import parse_seeds, parse_widths
from overparam_lit.runfolder import RunFolder
from overparam_lit.utils import ConfigError, check, tuples_to_lists

LATE_CHECKED = ("input_shape", "num_classes", "task", "seeds", "widths")
"""Model hyperparameters a checkpoint is compared on only once the model is built (they are linked
from the data module or resolved from the config's value)."""


def _as_dict(value: Any) -> Any:
    if isinstance(value, Namespace):
        return value.as_dict()
    return value


def check_trainer_config(trainer: Mapping[str, Any]) -> None:
    """Refuse trainer settings that Lightning or torch would refuse with a traceback."""
    devices = trainer.get("devices", "auto")
    bad = (isinstance(devices, int) and not isinstance(devices, bool) and (devices == 0 or devices < -1)) or (
        isinstance(devices, str) and devices.strip() in ("0", "", "[]")) or (
        isinstance(devices, (list, tuple)) and len(devices) == 0)
    check(not bad, "trainer.devices must name at least one device", devices,
          "Use --trainer.devices 1 (or N processes, or auto).")
    accelerator = trainer.get("accelerator", "auto")
    if isinstance(accelerator, str):
        acc = accelerator.lower()
        if acc in ("gpu", "cuda"):
            check(torch.cuda.is_available(), "this machine has no usable CUDA GPU for trainer.accelerator",
                  accelerator, "Use --trainer.accelerator cpu, or auto to use a GPU only where there is one.")
            if isinstance(devices, int) and devices > 0:
                n = torch.cuda.device_count()
                check(devices <= n, f"trainer.devices asks for more GPUs than the {n} visible", devices,
                      f"Use --trainer.devices {n} or fewer (or -1 for all).")
        elif acc == "mps":
            check(torch.backends.mps.is_available(), "this machine has no MPS device for trainer.accelerator",
                  accelerator, "Use --trainer.accelerator cpu or auto.")
        elif acc == "tpu":
            import importlib.util

            check(importlib.util.find_spec("torch_xla") is not None,
                  "trainer.accelerator tpu needs torch_xla, which is not installed", accelerator,
                  "Use --trainer.accelerator cpu or auto.")
    for key in ("max_epochs", "max_steps"):  # 0 would end the fit before its first step
        value = trainer.get(key)
        check(not (isinstance(value, int) and not isinstance(value, bool) and value == 0),
              f"trainer.{key} 0 would train nothing", value,
              f"Set --trainer.{key} to 1 or more ({key.split('_')[1]}), or -1 for no limit.")
    for key, low, meaning in (("max_epochs", -1, "-1 trains without an epoch limit"),
                              ("max_steps", -1, "-1 trains without a step limit"),
                              ("min_epochs", 0, "0 or more"), ("min_steps", 0, "0 or more")):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            check(value >= low, f"trainer.{key} must be >= {low}", value,
                  f"Set --trainer.{key} to a count of {key.split('_')[1]} ({meaning}).")
    for key in ("check_val_every_n_epoch", "log_every_n_steps", "accumulate_grad_batches"):
        value = trainer.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            check(value >= 1, f"trainer.{key} must be >= 1", value, f"Set --trainer.{key} to 1 or more.")


def check_seed(seed: Any) -> None:
    """``seed_everything`` must be a bool or an integer numpy accepts."""
    if isinstance(seed, int) and not isinstance(seed, bool):
        check(0 <= seed <= 2**32 - 1, "seed_everything must lie in [0, 2**32 - 1]", seed,
              "Use a non-negative integer such as 0, or true for a random seed.")


def check_optimizer_config(model: Mapping[str, Any]) -> None:
    """Refuse a learning rate that is not positive (a zero one trains nothing), and other
    negative optimizer sizes, in the config."""
    args = (model.get("init_args") or {}) if isinstance(model, Mapping) else {}
    for key in ("optimizer", "lr_scheduler"):
        spec = args.get(key)
        if not isinstance(spec, Mapping):
            continue
        for name, value in (spec.get("init_args") or {}).items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and name in ("lr", "weight_decay", "momentum", "eps", "max_lr"):
                if name in ("lr", "max_lr"):
                    what = "the learning rate" if name == "lr" else f"{key} argument {name}"
                    check(value > 0, f"{what} must be > 0 (0 leaves the weights where they start)", value,
                          f"Set --model.{key}.init_args.{name} to a positive number, e.g. 0.001.")
                check(value >= 0, f"{key} argument {name} must be >= 0", value,
                      f"Set --model.{key}.init_args.{name} to a non-negative number, e.g. 0.001.")


def _members_of(args: Mapping[str, Any], seed: Any = None) -> tuple[list[int] | None, list[int]] | None:
    """The members ``(seeds, widths)`` that model arguments describe, resolved as the model
    resolves them (``None`` for a single model); ``seed`` is the run's seed for widths-only fits."""
    try:
        seeds = parse_seeds(tuples_to_lists(args.get("seeds")))
        widths = parse_widths(tuples_to_lists(args.get("widths")))
    except ConfigError:
        return None  # refused with its own message when the model is built
    if seeds is None and widths is None:
        return None
    if seeds is None and seed is not None and not isinstance(seed, bool):
        seeds = [int(seed)]  # a widths-only fit's members take the run's seed
    return (seeds, widths or [int(args.get("width", 64))])  # seeds None: a random run seed, unknown


def check_checkpoint_matches(ckpt: Mapping[str, Any], model: Mapping[str, Any], ckpt_path: str,
                             seed: Any = None) -> None:
    """Refuse a checkpoint whose saved model hyperparameters differ from the model configured
    (members compared as the model resolves them; ``seed`` is the config's ``seed_everything``)."""
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if not hparams or not isinstance(model, Mapping):
        return
    diffs = []
    saved_class, class_path = hparams.get("_class_path"), model.get("class_path")
    if saved_class and class_path and saved_class != class_path:
        diffs.append(f"model class: checkpoint {saved_class}, config {class_path}")
    args = dict(model.get("init_args") or {})
    for key, saved in hparams.items():
        # linked data values and members' resolved lists are compared once the model is built
        if key.startswith("_") or key not in args or key in LATE_CHECKED:
            continue
        if tuples_to_lists(saved) != tuples_to_lists(_as_dict(args[key])):
            diffs.append(f"model.{key}: checkpoint {saved!r}, config {tuples_to_lists(args[key])!r}")
    saved_members, members = _members_of(hparams), _members_of(args, seed)
    if members is not None and saved_members is not None and members[0] is None:
        members = (saved_members[0], members[1])  # only the widths can be compared
    if saved_members != members:  # Lightning would silently load the checkpoint's members instead
        diffs.append(f"members (seeds, widths): checkpoint {saved_members}, config {members}")
    check(not diffs, "--ckpt_path holds a different model than the one configured: " + "; ".join(diffs),
          ckpt_path, "Resume with the settings the checkpoint was trained with (for example -c "
          "<run>/config.yaml), or drop --ckpt_path to start a new fit with these settings.")


def check_checkpoint_callbacks(ckpt: Mapping[str, Any], callbacks: Any, ckpt_path: str) -> None:
    """Refuse resuming a checkpoint whose mask-holding study callback is not configured."""
    saved = [str(k) for k in (ckpt.get("callbacks") or {})]
    specs = callbacks if isinstance(callbacks, list) else ([callbacks] if callbacks else [])
    configured = {str(_as_dict(c).get("class_path", "")).rsplit(".", 1)[-1] for c in specs
                  if isinstance(_as_dict(c), Mapping)}
    configured |= {type(c).__name__ for c in specs if not isinstance(_as_dict(c), Mapping)}
    for name, study in registry.model_changing().items():  # studies whose callback changes the model
        if any(k == name or k.startswith(name + "{") for k in saved):
            add = f"add -c callbacks/{study.fragment}.yaml, or " if study.fragment else "add it, or "
            check(name in configured, f"--ckpt_path was written by a fit with {name}, which is not "
                  "configured now: the network it changed would not be restored (pruned weights would "
                  "come back, a widened network would not load)",
                  ckpt_path, f"Resume with the same callbacks ({add}-c <run>/config.yaml).")


def resolve_last_checkpoint(root: str | Path | None) -> str:
    """``--ckpt_path last``: the run folder's ``last.ckpt``, or its newest intact checkpoint when
    ``last.ckpt`` is missing or damaged (said on the console)."""
    check(bool(root), "--ckpt_path last needs the run folder to resume", root,
          "Add --trainer.default_root_dir <run folder> (or -c <run>/config.yaml).")
    folder = RunFolder(str(root))
    found = folder.resume_checkpoint()
    check(found is not None, "--ckpt_path last found no intact checkpoint in the run folder", str(root),
          f"Check {folder.checkpoints}, or start the fit without --ckpt_path.")
    assert found is not None
    if found != folder.last_ckpt:
        print(f"overparam-lit: {folder.last_ckpt} is missing or damaged; resuming from {found}",
              file=sys.stderr)
    return str(found)


def check_run_folder(folder: RunFolder, ckpt_path: str | Path | None, overwrite: bool) -> bool:
    """May a new fit use ``folder``? Returns True when it must clear an earlier run first
    (``--overwrite``); raises :class:`ConfigError` when the folder holds a run that this fit
    neither resumes (a ``--ckpt_path`` inside the folder) nor overwrites."""
    if not folder.holds_run():
        return False
    resumes = bool(ckpt_path) and folder.owns(ckpt_path)
    if overwrite:
        check(not resumes, "--overwrite would delete the checkpoint this fit resumes from", str(ckpt_path),
              "Drop --overwrite to resume the run, or drop --ckpt_path to start over.")
        return True
    if resumes:
        return False
    found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in folder.existing_artifacts()[:6])
    last = folder.resume_checkpoint()
    resume = (f"resume it with --ckpt_path {last}, " if last is not None
              else "give its checkpoint with --ckpt_path, ")
    why = "--ckpt_path points outside this folder, so this would be a different fit; " if ckpt_path else ""
    raise ConfigError(
        f"the run folder already holds a run ({found}) (got {str(folder.root)!r}). {why}To continue that "
        f"run, {resume}to start over there pass --overwrite true (deletes that run's artifacts), or leave "
        "--trainer.default_root_dir unset for a fresh runs/<time>.")
