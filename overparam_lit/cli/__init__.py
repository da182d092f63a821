"""``overparam-lit``: a LightningCLI that links data to model, guards run folders and sets up logging.

Usage: ``overparam-lit fit -c configs/quickstart.yaml [-c callbacks/hessian.yaml] [--key value]``.

Before a fit touches its run folder, every check runs: the config (trainer devices and
accelerator, epochs, seed, learning rate), the checkpoint given with ``--ckpt_path`` (readable,
built for the same model, with the study callbacks whose state it holds) and the folder itself
(writable, not in use by another fit, holding no earlier run unless this fit resumes it or
``--overwrite true`` clears it). Bad input ends in one paragraph and exit code 2.

One module per job: :mod:`.app` (the LightningCLI and its run folder), :mod:`.save_config` (the
run's ``config.yaml``), :mod:`.checks` (the config checks), :mod:`.parser` and :mod:`.explain`
(parser errors in one line), :mod:`.wandb` (W&B options and loggers), :mod:`.console` (what a run
prints), :mod:`.config_files` (packaged fragments for ``-c``) and :mod:`.commands` (the extra
subcommands and :func:`main`). A name is looked up in the module that defines it: patch it there
(``overparam_lit.cli.app.check_trainer_config``, ``overparam_lit.cli.commands.COMMANDS``).
"""

import gc

# The imports below (Lightning, torch, torchmetrics, ...) build about half a million objects that
# live until the process ends. The cycle collector would walk them all several times while they
# are built and at every full collection after (each walk about a quarter of a second): it pauses
# while they are built, then they are frozen (gc.freeze: never walked again, still freed when no
# longer referenced) and it resumes as it was.
_collecting = gc.isenabled()
gc.disable()
try:
    from overparam_lit.cli.app import RUN_DIR_ENV, OverparamCLI
    from overparam_lit.cli.checks import (
        LATE_CHECKED,
        check_checkpoint_callbacks,
        check_checkpoint_matches,
        check_optimizer_config,
        check_run_folder,
        check_seed,
        check_trainer_config,
        resolve_last_checkpoint,
    )
    from overparam_lit.cli.commands import COMMANDS, Command, find_config_error, main, register_command
    from overparam_lit.cli.config_files import FRAGMENTS, resolve_config_args, resolve_fragment
    from overparam_lit.cli.console import (
        EpochLines,
        print_run_summary,
        quiet_console,
        stop_message,
        sweep_block_note,
        width_table,
    )
    from overparam_lit.cli.explain import (
        ParserProblem,
        describe_type,
        explain_parser_error,
        read_parser_message,
    )
    from overparam_lit.cli.parser import DEBUG_ENV, OverparamArgumentParser
    from overparam_lit.cli.save_config import SaveRunConfig
    from overparam_lit.cli.wandb import (
        DefineWandbAxes,
        WandbOptions,
        make_loggers,
    )
    from overparam_lit.wandb_mode import resolve_wandb_mode, wandb_has_credentials
finally:
    gc.freeze()
    if _collecting:
        gc.enable()

__all__ = [
    "COMMANDS", "DEBUG_ENV", "FRAGMENTS", "LATE_CHECKED", "RUN_DIR_ENV",
    "Command", "DefineWandbAxes", "EpochLines", "OverparamArgumentParser", "OverparamCLI",
    "ParserProblem", "SaveRunConfig", "WandbOptions", "check_checkpoint_callbacks",
    "check_checkpoint_matches", "check_optimizer_config", "check_run_folder", "check_seed",
    "check_trainer_config", "describe_type", "explain_parser_error", "find_config_error", "main",
    "make_loggers", "print_run_summary", "quiet_console", "read_parser_message", "register_command",
    "resolve_config_args", "resolve_fragment", "resolve_last_checkpoint", "resolve_wandb_mode",
    "stop_message", "sweep_block_note", "wandb_has_credentials", "width_table",
]
