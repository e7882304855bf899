"""boom_jax: Bagging-based rObust mOdel Merging for text embeddings, in JAX/Flax."""

__version__ = "0.1.0"
