"""Extractors that read raw offline sources (Debian lists, dictionaries, source trees) into plain records.

Only the corpus builder (`boom_jax.data.build_builtin`) uses them; using the built corpus needs none of this.
"""
