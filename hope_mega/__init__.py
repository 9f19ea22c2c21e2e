"""hope-mega: pretraining stack for Hope language models (Nested Learning)."""

__version__ = "0.1.0"
