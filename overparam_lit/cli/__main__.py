"""``python -m overparam_lit.cli`` runs the CLI, as ``python -m overparam_lit`` does."""

import sys

from overparam_lit.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
