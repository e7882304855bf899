"""Experiments that compare training strategies end to end (layer 4: uses boom/, training/, merging/, evaluation/).

`python -m boom_jax.experiments --config=configs/experiment.py --workdir=DIR` runs the BOOM paper's
comparison on the built-in corpus (boom_jax.experiments.runner.run_experiment) and writes DIR/RESULTS.md.
"""
