"""Model merging: pure merge methods over param trees, compatibility checks, merges over model folders.

`methods` and `compat` are pure (trees in, trees out); `streaming` reads and writes model folders.
"""

from boom_jax.merging.compat import IncompatibleModelsError, check_compatible
from boom_jax.merging.methods import MERGE_METHODS, MergeError, get_method, merge_leaf, merge_trees

__all__ = [
    "MERGE_METHODS",
    "IncompatibleModelsError",
    "MergeError",
    "check_compatible",
    "get_method",
    "merge_leaf",
    "merge_trees",
]
