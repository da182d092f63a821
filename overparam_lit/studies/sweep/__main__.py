"""``python -m overparam_lit.studies.sweep`` runs ``overparam-lit sweep``."""

import sys

from overparam_lit.studies.sweep.command import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
