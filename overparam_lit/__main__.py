"""``python -m overparam_lit`` runs the CLI (through :mod:`overparam_lit.entry`, as the command does)."""

from overparam_lit.entry import main

main()
