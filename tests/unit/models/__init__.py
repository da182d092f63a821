"""Unit tests of ``overparam_lit.models``."""
