"""Study configs: the ``sweep:`` block of a fit config, and the plan of fits it expands to.

A study config is an ordinary ``overparam-lit fit`` config plus a top-level ``sweep:`` block
(``overparam-lit fit`` ignores the block and runs the base point)::

    sweep:
      name: dd                       # optional: sweep and W&B group name (default: the --out folder)
      figure: double-descent         # optional: the figure `overparam-lit plot DIR` draws
      grid:                          # CLI keys of `overparam-lit fit` -> values (a list, a scalar,
        model.init_args.width: [8, 16, 32, 64]   # or range(a, b))
        seed_everything: range(3)
        trainer.callbacks.mode, trainer.callbacks.sigma:   # keys joined by ", " vary together
          - [ticket, null]
          - [perturb_rest, 0.1]
      pack: seeds                    # seeds | widths | all | none: grid axes folded into member fits
      width_groups: [[8, 16, 32], [64]]   # optional: widths that share a fit when widths are packed
      set: {trainer.callbacks.bank_path: "{sweep}/bank.pt"}   # optional: fixed arguments of every fit
      stages:                        # optional: later stages, run after the fits they refer to
        - name: controls
          grid: {trainer.callbacks.ticket: ["{main.imp_level:8}"]}   # merged over the main grid
          drop: []                   # main grid keys this stage leaves out
          set: {trainer.callbacks: [{class_path: overparam_lit.callbacks.ticket.TicketStart}]}

**Packing.** ``seed_everything: [0, 1, 2]`` with ``pack: seeds`` becomes one fit with
``--model.seeds [0, 1, 2]`` (member ``s`` trains exactly as the single run ``--seed_everything s``);
``model.init_args.width`` with ``pack: widths`` becomes ``--model.widths [...]`` (one fit per entry
of ``width_groups``, default all widths in one fit); ``all`` packs both, ``none`` neither.

**Stages.** The first stage, ``main``, is the block's own ``grid``/``pack``/``set``. Every entry of
``stages`` starts from the main grid (minus ``drop``), adds or overrides keys with its own
``grid``, inherits ``pack`` and ``width_groups`` unless it gives them, and has its own ``set``
(the main ``set`` is not inherited). Values may refer to run folders:

- ``{sweep}``: the sweep folder;
- ``{STAGE}``: the run folder of the fit of an earlier stage ``STAGE`` with the same values of
  the keys both stages share (and the same packed seeds and widths);
- ``{STAGE.NAME}`` / ``{STAGE.NAME:ARG}``: a property or one-argument method of that fit's
  :class:`~overparam_lit.runfolder.RunFolder` (``{main.imp_level:8}`` is its ``imp/level_08``).

A fit of a later stage starts once the fits it refers to have finished.

:mod:`.block` parses and checks the block (:class:`StudySpec`); :mod:`.plan` expands it into the
fits of a sweep (:class:`Plan`).
"""

from overparam_lit.studies.spec.block import (
    BLOCK_KEYS,
    MAIN,
    PACK_MODES,
    SEED_KEY,
    STAGE_KEYS,
    SWEEP_KEY,
    WIDTH_KEYS,
    Axis,
    StageSpec,
    StudySpec,
    parse_sweep_block,
    parse_width_groups,
    read_study,
    read_yaml,
)
from overparam_lit.studies.spec.plan import Fit, Plan, make_plan

__all__ = [
    "BLOCK_KEYS", "MAIN", "PACK_MODES", "SEED_KEY", "STAGE_KEYS", "SWEEP_KEY", "WIDTH_KEYS", "Axis", "Fit",
    "Plan", "StageSpec", "StudySpec", "make_plan", "parse_sweep_block", "parse_width_groups", "read_study",
    "read_yaml",
]
