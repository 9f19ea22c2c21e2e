"""Checkpoint conversion: native HopeLM weights to and from a Hugging Face folder."""

from .export import ConversionError, export_hf, import_hf, read_hf_config

__all__ = ["ConversionError", "export_hf", "import_hf", "read_hf_config"]
