"""Unit tests laid out like the package (``tests/unit/models/test_stack.py`` tests
``overparam_lit/models/stack.py``); a package, so their module names do not clash with ``tests/*.py``."""
