"""The bagging sampler: per-dataset subsets at a ratio, recorded in a JSON manifest for reproduction.

Randomness comes only from `dataset_rng(seed, *keys)`: a PCG64 generator seeded from a SHA-256 of the
seed and the keys (dataset name, ...), so the same seed gives the same subsets on any machine and
Python version (Python's `hash` is salted per process and is never used).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence

import numpy as np

from boom_jax.atomic_io import write_text
from boom_jax.data.records import TrainDataset

SAMPLING_MODES = ("without_replacement", "with_replacement", "pooled")
MANIFEST_VERSION = 1


def derive_seed(seed: int, *keys: object) -> int:
    """A 64-bit seed from `seed` and any keys, stable across machines and processes."""
    text = json.dumps([int(seed), *[str(k) for k in keys]], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def dataset_rng(seed: int, *keys: object) -> np.random.Generator:
    """numpy Generator(PCG64) for (seed, keys...), e.g. dataset_rng(seed, "msmarco", "epoch", 3)."""
    return np.random.Generator(np.random.PCG64(derive_seed(seed, *keys)))


def subset_size(n: int, ratio: float) -> int:
    """Examples a subset at `ratio` of `n` holds: round(ratio * n) (Python's round), within [0, n] for ratio <= 1."""
    return int(round(ratio * n))


def _check_ratio(ratio: float, replace: bool) -> None:
    if not isinstance(ratio, (int, float)) or ratio <= 0:
        raise ValueError(f"sampling ratio must be a number > 0, got {ratio!r}")
    if ratio > 1 and not replace:
        raise ValueError(f"sampling ratio {ratio} > 1 needs replace=True (sampling without replacement)")


@dataclasses.dataclass
class SubsetManifest:
    """Which examples one bag member trains on: dataset name -> sorted example indices.

    `sizes` holds each dataset's full size, to check the manifest against the data it is applied to.
    """

    ratio: float
    seed: int
    mode: str
    indices: dict[str, list[int]]
    sizes: dict[str, int]

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"SubsetManifest.mode must be one of {SAMPLING_MODES}, got {self.mode!r}")

    @property
    def num_examples(self) -> int:
        return sum(len(v) for v in self.indices.values())

    def to_dict(self) -> dict:
        return {"version": MANIFEST_VERSION, "ratio": self.ratio, "seed": self.seed, "mode": self.mode,
                "sizes": dict(self.sizes), "indices": {k: list(v) for k, v in self.indices.items()}}

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "SubsetManifest":
        missing = [k for k in ("ratio", "seed", "mode", "indices", "sizes") if k not in d]
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        if d.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
            raise ValueError(f"{where}: unsupported manifest version {d.get('version')!r}")
        return cls(ratio=float(d["ratio"]), seed=int(d["seed"]), mode=str(d["mode"]),
                   indices={str(k): [int(i) for i in v] for k, v in d["indices"].items()},
                   sizes={str(k): int(v) for k, v in d["sizes"].items()})

    def save(self, path: str) -> None:
        """Writes the manifest as compact JSON atomically (boom_jax.atomic_io)."""
        write_text(path, json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str) -> "SubsetManifest":
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a valid manifest JSON ({e})") from None
        return cls.from_dict(d, where=path)

    def apply(self, datasets: Sequence[TrainDataset]) -> list[TrainDataset]:
        """The member's training data: each dataset restricted to its indices (repeats kept when sampled
        with replacement); datasets absent from the manifest or with no index are left out."""
        by_name = {d.name: d for d in datasets}
        out = []
        for name, idx in self.indices.items():
            if name not in by_name:
                raise ValueError(f"manifest names dataset {name!r}, which is not loaded; loaded: {sorted(by_name)}")
            d = by_name[name]
            if len(d) != self.sizes[name]:
                raise ValueError(f"dataset {name!r} has {len(d)} examples but the manifest was drawn from "
                                 f"{self.sizes[name]}; the data changed since the manifest was written")
            if idx:
                out.append(dataclasses.replace(d, examples=[d.examples[i] for i in idx]))
        return out


def _draw(rng: np.random.Generator, n: int, k: int, replace: bool) -> list[int]:
    if replace:
        chosen = rng.integers(0, n, size=k) if n else np.zeros(0, dtype=np.int64)
    else:
        chosen = rng.choice(n, size=k, replace=False) if k else np.zeros(0, dtype=np.int64)
    return sorted(int(i) for i in chosen)


def sample_subsets(
    datasets: Sequence[TrainDataset], ratio: float, seed: int, replace: bool = False, pooled: bool = False
) -> SubsetManifest:
    """One bag member's subset.

    Default: exactly round(ratio * n) examples of every dataset, without replacement. replace=True:
    the classic bootstrap (round(ratio * n) draws with replacement per dataset). pooled=True: round(ratio
    * total) examples drawn without replacement from all datasets together (per-dataset shares vary).
    """
    if replace and pooled:
        raise ValueError("sample_subsets: choose either replace=True or pooled=True, not both")
    _check_ratio(ratio, replace)
    sizes = {d.name: len(d) for d in datasets}
    if len(sizes) != len(datasets):
        raise ValueError("sample_subsets: dataset names must be unique")
    if pooled:
        offsets = np.cumsum([0] + [len(d) for d in datasets])
        chosen = _draw(dataset_rng(seed, "pooled"), int(offsets[-1]), subset_size(int(offsets[-1]), ratio), False)
        chosen_arr = np.asarray(chosen, dtype=np.int64)
        indices = {}
        for j, d in enumerate(datasets):
            sel = chosen_arr[(chosen_arr >= offsets[j]) & (chosen_arr < offsets[j + 1])] - offsets[j]
            indices[d.name] = [int(i) for i in sel]
        mode = "pooled"
    else:
        indices = {d.name: _draw(dataset_rng(seed, d.name), len(d), subset_size(len(d), ratio), replace)
                   for d in datasets}
        mode = "with_replacement" if replace else "without_replacement"
    return SubsetManifest(ratio=float(ratio), seed=int(seed), mode=mode, indices=indices, sizes=sizes)


def member_seed(seed: int, member: int) -> int:
    """The sampling seed of bag member `member` (independent draws per member)."""
    return derive_seed(seed, "member", member) % (2**31)


def sample_bag(
    datasets: Sequence[TrainDataset], ratios: Sequence[float], seed: int, replace: bool = False, pooled: bool = False
) -> list[SubsetManifest]:
    """One manifest per bag member (ratios e.g. (0.2, 0.4, 0.6, 0.8, 1.0)), each with its own seed."""
    return [sample_subsets(datasets, r, member_seed(seed, i), replace=replace, pooled=pooled)
            for i, r in enumerate(ratios)]


def historical_subset(old_datasets: Sequence[TrainDataset], ratio: float = 0.4, seed: int = 0) -> SubsetManifest:
    """The replay subset of the old data for an incremental update: `ratio` of every old dataset
    (per-dataset proportions kept), without replacement. Save it and reuse it across updates."""
    return sample_subsets(old_datasets, ratio, seed)


def combine_incremental(
    old_datasets: Sequence[TrainDataset],
    new_datasets: Sequence[TrainDataset],
    ratio: float = 0.4,
    seed: int = 0,
    history: SubsetManifest | None = None,
) -> tuple[list[TrainDataset], SubsetManifest]:
    """Training data of an incremental update model: all of the new datasets plus a historical subset of
    the old ones (`history` if given, e.g. loaded from an earlier update, else drawn at `ratio`).

    Returns (datasets, manifest) where the manifest records both parts (new datasets in full)."""
    old_names = {d.name for d in old_datasets}
    clash = sorted(old_names & {d.name for d in new_datasets})
    if clash:
        raise ValueError(f"new datasets reuse the names of old ones: {clash}; rename the new data")
    history = history if history is not None else historical_subset(old_datasets, ratio, seed)
    combined = history.apply(old_datasets) + [d for d in new_datasets if len(d)]
    indices = dict(history.indices)
    sizes = dict(history.sizes)
    for d in new_datasets:
        indices[d.name] = list(range(len(d)))
        sizes[d.name] = len(d)
    manifest = SubsetManifest(ratio=history.ratio, seed=history.seed, mode=history.mode, indices=indices, sizes=sizes)
    return combined, manifest
