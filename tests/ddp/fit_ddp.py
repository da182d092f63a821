"""Two CPU processes (gloo) train the quickstart model through the CLI; used by tests/cli/test_cli.py."""

import sys

from overparam_lit.cli import main

if __name__ == "__main__":
    main([
        "fit", "-c", "configs/quickstart.yaml",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_epochs", "2", "--trainer.default_root_dir", sys.argv[1],
        "--model.width", "32", "--wandb.mode", "disabled",
    ])
