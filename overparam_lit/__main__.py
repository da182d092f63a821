"""``python -m overparam_lit`` runs the CLI."""

from overparam_lit.cli import main

main()
