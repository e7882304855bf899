"""Hugging Face bridge: HF <-> Flax weight maps, loading HF folders, sentence-transformers export."""

from boom_jax.hf.errors import HFFolderError, WeightMapError
from boom_jax.hf.export import export_sentence_transformers, flax_to_hf
from boom_jax.hf.loader import load_hf_model

__all__ = ["HFFolderError", "WeightMapError", "export_sentence_transformers", "flax_to_hf", "load_hf_model"]
