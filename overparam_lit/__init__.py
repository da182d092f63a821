"""overparam-lit: study why overparameterized networks succeed, in Lightning."""

__version__ = "0.1.0"
