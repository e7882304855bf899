"""Merge methods: pure functions over parameter trees, applied leaf by leaf.

Every method is registered in `MERGE_METHODS` and called as

    MERGE_METHODS[name](trees, weights=None, base=None, include=None, exclude=None, **params) -> tree

`trees` are K nested dicts with the same structure (numpy or jax arrays). Each leaf is merged on its
own (`merge_leaf`), in float64, and cast back to the leaf's dtype, so the result has the structure and
dtypes of the inputs (a bfloat16 leaf stays bfloat16). The streaming merge calls the same `merge_leaf`
on leaves read from disk, which is why it equals the in-memory merge exactly.

Per-parameter settings: `weights` and every method parameter may be a plain value or a dict from a
regular expression (matched with `re.fullmatch` against the leaf path, e.g. "encoder/layer_0/.*") to a
value, with an optional "default" key; the first matching pattern wins. `include` / `exclude` (a regex
or a list of them) choose which leaves are merged; any other leaf is copied from `base` when given,
else from the first tree.

Methods that average (linear, slerp, multislerp, karcher, model_stock) normalize the weights to sum
1. The task-vector methods (task_arithmetic, ties, dare_linear, dare_ties) work on theta_i - base and
need `base`; task_arithmetic and dare_linear use the weights as given (default 1/K each, i.e. the mean
task vector), ties and dare_ties take a weighted disjoint mean (scale-free in the weights).

The spherical methods (slerp, multislerp, karcher) and the linear ones only ever produce a linear
combination of the K inputs (and the base). They are computed from the K x K Gram matrix of the
flattened tensors and one combination pass, both in chunks, so a leaf costs about one extra tensor of
memory instead of K float64 copies.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

# Elements per member handled at once in the chunked Gram / combination passes.
CHUNK_ELEMENTS = 1 << 20
# A weighted mean direction shorter than this (unit vectors, weights summing to 1) is treated as
# vanished: the spherical methods fall back to the linear (weighted average) merge.
MEAN_NORM_EPS = 1e-8
# A tangent vector shorter than this is treated as zero (the point is the mean direction itself, or
# exactly opposite it, where the tangent direction is undefined and taken as zero).
TANGENT_EPS = 1e-12
# slerp interpolates linearly when the two directions are this close to parallel or antiparallel.
SLERP_COLINEAR_EPS = 1e-9

Tree = Any
PatternValue = Any  # a value, or a Mapping from regex (or "default") to a value


class MergeError(ValueError):
    """A merge that cannot be computed as asked (bad weights, missing base, unknown parameter...)."""


# ----------------------------------------------------------------------------------------------
# Paths, per-pattern values, filters


def path_to_str(path: Sequence[Any]) -> str:
    """Slash-joined leaf path ("encoder/layer_0/attention/query/kernel") of a jax key path."""
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def flatten_with_paths(tree: Tree) -> tuple[list[tuple[str, Any]], Any]:
    """(list of (path string, leaf), treedef) of a tree, in jax's leaf order."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(path_to_str(p), leaf) for p, leaf in leaves], treedef


def resolve_for_path(value: PatternValue, path: str, name: str = "value") -> Any:
    """The value that applies to `path`: `value` itself, or the first fullmatching pattern's entry."""
    if not isinstance(value, Mapping):
        return value
    for pattern, entry in value.items():
        if pattern != "default" and re.fullmatch(pattern, path):
            return entry
    if "default" in value:
        return value["default"]
    raise MergeError(
        f"{name}: no pattern matches parameter {path!r} and there is no 'default' entry "
        f"(patterns: {list(value)})"
    )


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def is_selected(path: str, include: str | Sequence[str] | None, exclude: str | Sequence[str] | None) -> bool:
    """Whether a leaf is merged: it matches some `include` pattern (default all) and no `exclude`."""
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    if inc is not None and not any(re.fullmatch(p, path) for p in inc):
        return False
    return not (exc is not None and any(re.fullmatch(p, path) for p in exc))


# ----------------------------------------------------------------------------------------------
# Chunked linear algebra over K flattened tensors


def _flat(x: Any) -> np.ndarray:
    return np.asarray(x).reshape(-1)


def _chunk_slices(n: int) -> list[slice]:
    return [slice(s, min(n, s + CHUNK_ELEMENTS)) for s in range(0, max(n, 1), CHUNK_ELEMENTS)]


class Stack:
    """K same-shaped tensors (minus an optional base) seen as float64 [K, C] chunks.

    A tensor of at most CHUNK_ELEMENTS is converted once and reused by `gram` and `combine`; a
    bigger one is converted chunk by chunk in each pass, so memory stays ~ K x one chunk.
    """

    def __init__(self, xs: Sequence[Any], base: Any = None):
        self.flats = [_flat(x) for x in xs]
        self.base = None if base is None else _flat(base)
        self.shape = np.shape(xs[0])
        self.dtype = np.asarray(xs[0]).dtype
        self.slices = _chunk_slices(self.flats[0].size)
        self._cached: np.ndarray | None = None

    def _chunk(self, sl: slice) -> np.ndarray:
        if self._cached is not None:
            return self._cached
        chunk = np.empty((len(self.flats), sl.stop - sl.start))
        for i, f in enumerate(self.flats):
            chunk[i] = f[sl]
        if self.base is not None:
            chunk -= self.base[sl]
        if len(self.slices) == 1:
            self._cached = chunk
        return chunk

    def gram(self) -> np.ndarray:
        """float64 [K, K] inner products of the flattened tensors (minus base)."""
        gram = np.zeros((len(self.flats), len(self.flats)))
        for sl in self.slices:
            chunk = self._chunk(sl)
            gram += chunk @ chunk.T
        return gram

    def combine(self, coeffs: np.ndarray) -> np.ndarray:
        """sum_i coeffs_i (x_i - base) + base in float64, cast to the inputs' dtype and shape."""
        out = np.empty(self.flats[0].size, dtype=self.dtype)
        coeffs = np.asarray(coeffs, dtype=np.float64)
        for sl in self.slices:
            acc = coeffs @ self._chunk(sl)
            if self.base is not None:
                acc += self.base[sl]
            out[sl] = acc
        return out.reshape(self.shape)


def gram_matrix(xs: Sequence[Any], base: Any = None) -> np.ndarray:
    """float64 [K, K] inner products of the flattened tensors (minus base), accumulated in chunks."""
    return Stack(xs, base).gram()


def combine(xs: Sequence[Any], coeffs: np.ndarray, base: Any = None) -> np.ndarray:
    """sum_i coeffs_i (x_i - base) + base, computed in float64 chunks, cast to the inputs' dtype."""
    return Stack(xs, base).combine(coeffs)


# ----------------------------------------------------------------------------------------------
# Spherical geometry in coefficient space: a vector sum_i c_i u_i of the unit inputs u_i is held as
# its coefficients c; inner products come from the cosine matrix.


@dataclasses.dataclass(frozen=True)
class _Sphere:
    norms: np.ndarray  # [K] norms of the inputs
    cos: np.ndarray  # [K, K] inner products of the unit inputs (zero rows for zero inputs)

    @classmethod
    def from_gram(cls, gram: np.ndarray) -> _Sphere:
        norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
        inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
        return cls(norms=norms, cos=gram * inv[:, None] * inv[None, :])

    def norm(self, c: np.ndarray) -> float:
        return float(np.sqrt(max(float(c @ self.cos @ c), 0.0)))

    def to_input_coeffs(self, c: np.ndarray) -> np.ndarray:
        """Coefficients over the original inputs x_i = norm_i u_i."""
        return np.where(self.norms > 0, c / np.where(self.norms > 0, self.norms, 1.0), 0.0)

    def log_map(self, mu: np.ndarray, weights: np.ndarray, true_log: bool = True) -> np.ndarray:
        """sum_i w_i log_mu(u_i) as coefficients; mu a unit vector (coefficients).

        log_mu(u) = theta / sin(theta) * (u - cos(theta) mu). With `true_log=False` the plain
        projection u - cos(theta) mu is used (mergekit's multislerp). A u at (or numerically at) mu
        or -mu contributes the zero vector.
        """
        cos_theta = np.clip(self.cos @ mu, -1.0, 1.0)  # [K]
        sin_theta = np.sqrt(np.maximum(1.0 - cos_theta**2, 0.0))
        if true_log:
            theta = np.arctan2(sin_theta, cos_theta)
            safe = sin_theta > TANGENT_EPS
            scale = np.where(safe, theta / np.where(safe, sin_theta, 1.0), np.where(cos_theta > 0, 1.0, 0.0))
        else:
            scale = np.ones_like(cos_theta)
        scale = np.where(self.norms > 0, scale, 0.0)
        wf = weights * scale
        return wf - float(wf @ cos_theta) * mu

    def exp_map(self, mu: np.ndarray, tangent: np.ndarray) -> np.ndarray:
        """exp_mu(t) = cos|t| mu + sin|t| / |t| t, as coefficients."""
        size = self.norm(tangent)
        return np.cos(size) * mu + np.sinc(size / np.pi) * tangent


def _weighted_mean_direction(sphere: _Sphere, weights: np.ndarray) -> np.ndarray | None:
    mean = np.where(sphere.norms > 0, weights, 0.0)
    size = sphere.norm(mean)
    return None if size < MEAN_NORM_EPS else mean / size


# ----------------------------------------------------------------------------------------------
# Leaf merges. Each takes the K leaves, the normalized-or-raw weights, the base leaf (or None) and
# the method's parameters, and returns the merged leaf in the inputs' dtype.


def _linear_leaf(xs: list[np.ndarray], weights: np.ndarray, base: Any) -> np.ndarray:
    return combine(xs, weights, base)


def _spherical_result(stack: Stack, weights, sphere: _Sphere, direction: np.ndarray) -> np.ndarray:
    avg_norm = float(weights @ sphere.norms)
    return stack.combine(sphere.to_input_coeffs(avg_norm * direction))


def _multislerp_leaf(xs, weights, base, tangent: str = "log") -> np.ndarray:
    if tangent not in ("log", "projection"):
        raise MergeError(f"multislerp: tangent must be 'log' or 'projection', got {tangent!r}")
    stack = Stack(xs, base)
    sphere = _Sphere.from_gram(stack.gram())
    mu = _weighted_mean_direction(sphere, weights)
    if mu is None:  # inputs cancel out (e.g. exactly opposite, equal weights): weighted average
        return stack.combine(weights)
    tangent_sum = sphere.log_map(mu, weights, true_log=tangent == "log")
    return _spherical_result(stack, weights, sphere, sphere.exp_map(mu, tangent_sum))


def _karcher_leaf(xs, weights, base, max_iter: int = 50, tol: float = 1e-10) -> np.ndarray:
    stack = Stack(xs, base)
    sphere = _Sphere.from_gram(stack.gram())
    mu = _weighted_mean_direction(sphere, weights)
    if mu is None:
        return stack.combine(weights)
    for _ in range(int(max_iter)):
        step = sphere.log_map(mu, weights)
        if sphere.norm(step) < tol:
            break
        mu = sphere.exp_map(mu, step)
        mu = mu / sphere.norm(mu)
    return _spherical_result(stack, weights, sphere, mu)


def _slerp_leaf(xs, weights, base, t: float | None = None) -> np.ndarray:
    if len(xs) != 2:
        raise MergeError(f"slerp merges exactly 2 models, got {len(xs)} (use multislerp for more)")
    t = float(weights[1]) if t is None else float(t)
    stack = Stack(xs, base)
    gram = stack.gram()
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    if norms.min() == 0.0:
        return stack.combine(np.array([1.0 - t, t]))
    dot = float(np.clip(gram[0, 1] / (norms[0] * norms[1]), -1.0, 1.0))
    if abs(dot) > 1.0 - SLERP_COLINEAR_EPS:
        return stack.combine(np.array([1.0 - t, t]))
    theta = np.arccos(dot)
    coeffs = np.array([np.sin((1.0 - t) * theta), np.sin(t * theta)]) / np.sin(theta)
    return stack.combine(coeffs)


def _task_vectors(xs, base) -> np.ndarray:
    return np.stack([np.asarray(x, np.float64) - np.asarray(base, np.float64) for x in xs])


def _task_arithmetic_leaf(xs, weights, base, lambda_: float = 1.0) -> np.ndarray:
    return combine(xs, float(lambda_) * weights, base)


def _trim_by_magnitude(deltas: np.ndarray, density: float) -> np.ndarray:
    """Keep the top `density` fraction (int(density * n)) of each row by magnitude, zero the rest."""
    n = deltas.shape[1]
    keep = int(density * n)
    if keep >= n:
        return deltas
    out = np.zeros_like(deltas)
    if keep <= 0:
        return out
    for i, row in enumerate(deltas):
        top = np.argpartition(-np.abs(row), keep - 1)[:keep]
        out[i, top] = row[top]
    return out


def _drop_and_rescale(deltas: np.ndarray, density: float, seed: int, path: str) -> np.ndarray:
    """DARE: drop each entry with probability 1 - density, rescale the kept ones by 1 / density.

    The random stream depends only on (seed, parameter path, member index), so results do not
    depend on the order leaves are visited in (in-memory and streaming merges agree).
    """
    if density >= 1.0:
        return deltas
    if density <= 0.0:
        return np.zeros_like(deltas)
    out = np.empty_like(deltas)
    for i, row in enumerate(deltas):
        rng = np.random.default_rng([int(seed), zlib.crc32(path.encode()), i])
        out[i] = np.where(rng.random(row.shape) < density, row / density, 0.0)
    return out


def _disjoint_merge(deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """TIES sign election (sign of the weighted sum) and weighted mean over the agreeing members."""
    weighted = deltas * weights[:, None]
    elected = np.sign(weighted.sum(axis=0))
    agree = np.sign(weighted) == elected[None, :]
    mixed = np.where(agree, weighted, 0.0).sum(axis=0)
    divisor = np.where(agree, weights[:, None], 0.0).sum(axis=0)
    divisor = np.where(np.abs(divisor) < 1e-8, 1.0, divisor)
    return mixed / divisor


def _finish(base: Any, merged_delta: np.ndarray, lambda_: float) -> np.ndarray:
    b = np.asarray(base)
    out = b.astype(np.float64).reshape(-1) + float(lambda_) * merged_delta
    return out.astype(b.dtype).reshape(b.shape)


def _ties_leaf(xs, weights, base, density: float = 1.0, lambda_: float = 1.0) -> np.ndarray:
    deltas = _trim_by_magnitude(_task_vectors(xs, base).reshape(len(xs), -1), float(density))
    return _finish(base, _disjoint_merge(deltas, weights), lambda_)


def _dare_ties_leaf(xs, weights, base, density: float = 0.5, lambda_: float = 1.0, seed: int = 0, *, path: str) -> np.ndarray:
    deltas = _drop_and_rescale(_task_vectors(xs, base).reshape(len(xs), -1), float(density), seed, path)
    return _finish(base, _disjoint_merge(deltas, weights), lambda_)


def _dare_linear_leaf(xs, weights, base, density: float = 0.5, lambda_: float = 1.0, seed: int = 0, *, path: str) -> np.ndarray:
    deltas = _drop_and_rescale(_task_vectors(xs, base).reshape(len(xs), -1), float(density), seed, path)
    return _finish(base, weights @ deltas, lambda_)


def _model_stock_leaf(xs, weights, base) -> np.ndarray:
    """Model Stock (Jang et al. 2024): t * weighted mean + (1 - t) * base, with
    t = K cos / (1 + (K - 1) cos), cos the mean pairwise cosine of the task vectors.

    A negative mean cosine is clipped to 0 (t = 0: the base); a zero task vector has cosine 0.
    """
    k = len(xs)
    if k < 2:
        raise MergeError(f"model_stock needs at least 2 models, got {k}")
    stack = Stack(xs, base)
    sphere = _Sphere.from_gram(stack.gram())
    cos = float(np.clip(sphere.cos[np.triu_indices(k, 1)].mean(), 0.0, 1.0))
    t = k * cos / (1.0 + (k - 1) * cos)
    return stack.combine(t * weights)


# ----------------------------------------------------------------------------------------------
# Registry


@dataclasses.dataclass(frozen=True)
class MergeMethod:
    """A registered method: its leaf function and how it treats weights and the base."""

    name: str
    leaf_fn: Callable[..., np.ndarray]
    description: str
    needs_base: bool = False
    normalize_weights: bool = True
    params: tuple[str, ...] = ()
    wants_path: bool = False

    def __call__(
        self,
        trees: Sequence[Tree],
        weights: PatternValue = None,
        base: Tree | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        **params: Any,
    ) -> Tree:
        return merge_trees(self.name, trees, weights=weights, base=base, include=include, exclude=exclude, **params)


_METHODS = [
    MergeMethod("linear", _linear_leaf, "weighted average of the parameters"),
    MergeMethod("slerp", _slerp_leaf, "spherical interpolation of 2 models at t (default weights[1])", params=("t",)),
    MergeMethod(
        "multislerp",
        _multislerp_leaf,
        "spherical weighted mean (log map at the weighted mean direction, exp map back, mean norm)",
        params=("tangent",),
    ),
    MergeMethod("karcher", _karcher_leaf, "iterative Karcher (Frechet) mean on the sphere, mean norm", params=("max_iter", "tol")),
    MergeMethod(
        "task_arithmetic",
        _task_arithmetic_leaf,
        "base + lambda_ * sum_i w_i (theta_i - base); weights as given (default 1/K)",
        needs_base=True,
        normalize_weights=False,
        params=("lambda_",),
    ),
    MergeMethod(
        "ties", _ties_leaf, "trim task vectors to density, elect signs, disjoint mean", needs_base=True, params=("density", "lambda_")
    ),
    MergeMethod(
        "dare_linear",
        _dare_linear_leaf,
        "seeded random drop (keep density) with rescale, then task arithmetic",
        needs_base=True,
        normalize_weights=False,
        params=("density", "lambda_", "seed"),
        wants_path=True,
    ),
    MergeMethod(
        "dare_ties",
        _dare_ties_leaf,
        "seeded random drop (keep density) with rescale, then TIES sign election and disjoint mean",
        needs_base=True,
        params=("density", "lambda_", "seed"),
        wants_path=True,
    ),
    MergeMethod("model_stock", _model_stock_leaf, "Model Stock: interpolate mean and base by the task-vector angle", needs_base=True),
]
MERGE_METHODS: dict[str, MergeMethod] = {m.name: m for m in _METHODS}


def get_method(name: str) -> MergeMethod:
    """The registered method `name`, or an error listing the known ones."""
    if name not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {name!r}; known: {', '.join(MERGE_METHODS)}")
    return MERGE_METHODS[name]


def leaf_weights(method: MergeMethod, weights: PatternValue, path: str, k: int) -> np.ndarray:
    """The K weights that apply to leaf `path`, normalized to sum 1 when the method averages."""
    value = resolve_for_path(weights, path, "weights")
    if value is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(value, dtype=np.float64).reshape(-1)
    if w.size != k:
        raise MergeError(f"weights for {path!r}: expected {k} values (one per model), got {w.size}: {list(w)}")
    if not np.all(np.isfinite(w)):
        raise MergeError(f"weights for {path!r} must be finite, got {list(w)}")
    if method.normalize_weights:
        total = w.sum()
        if total == 0 or not np.isfinite(total):
            raise MergeError(f"weights for {path!r} sum to {total}; cannot normalize {list(w)}")
        w = w / total
    return w


def merge_leaf(
    method: str | MergeMethod,
    path: str,
    leaves: Sequence[Any],
    base_leaf: Any = None,
    weights: PatternValue = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    **params: Any,
) -> np.ndarray:
    """Merge one parameter (the same leaf `path` of K models) into a numpy array of its dtype."""
    m = method if isinstance(method, MergeMethod) else get_method(method)
    unknown = sorted(set(params) - set(m.params))
    if unknown:
        raise MergeError(f"{m.name}: unknown parameter(s) {unknown}; accepted: {list(m.params) or 'none'}")
    if m.needs_base and base_leaf is None:
        raise MergeError(f"{m.name} works on task vectors and needs a base model (base=...)")
    xs = [np.asarray(x) for x in leaves]
    first = xs[0]
    if not is_selected(path, include, exclude):
        return np.array(first if base_leaf is None else np.asarray(base_leaf), copy=True)
    if not jax.numpy.issubdtype(first.dtype, jax.numpy.floating):
        if all(np.array_equal(first, x) for x in xs[1:]):
            return np.array(first, copy=True)
        raise MergeError(f"{path!r}: cannot merge differing non-float parameters of dtype {first.dtype}")
    w = leaf_weights(m, weights, path, len(xs))
    leaf_params = {k: resolve_for_path(v, path, k) for k, v in params.items()}
    if m.wants_path:
        leaf_params["path"] = path
    base = None if base_leaf is None else np.asarray(base_leaf)
    out = m.leaf_fn(xs, w, base, **leaf_params)
    return np.asarray(out).astype(first.dtype, copy=False).reshape(first.shape)


def merge_trees(
    method: str,
    trees: Sequence[Tree],
    weights: PatternValue = None,
    base: Tree | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    **params: Any,
) -> Tree:
    """Merge K trees of the same structure leaf by leaf with method `method`."""
    m = get_method(method)
    if len(trees) == 0:
        raise MergeError(f"{m.name}: nothing to merge (no input models)")
    flat = [flatten_with_paths(t) for t in trees]
    treedef = flat[0][1]
    for i, (_, td) in enumerate(flat[1:], start=1):
        if td != treedef:
            raise MergeError(f"model {i} has another tree structure than model 0 (run compat.check_compatible for details)")
    base_leaves = None
    if base is not None:
        base_flat, base_def = flatten_with_paths(base)
        if base_def != treedef:
            raise MergeError("the base model has another tree structure than the inputs")
        base_leaves = [leaf for _, leaf in base_flat]
    as_jax = isinstance(flat[0][0][0][1], jax.Array) if flat[0][0] else False
    merged = []
    for j, (path, _) in enumerate(flat[0][0]):
        out = merge_leaf(
            m,
            path,
            [f[0][j][1] for f in flat],
            None if base_leaves is None else base_leaves[j],
            weights=weights,
            include=include,
            exclude=exclude,
            **params,
        )
        merged.append(jax.numpy.asarray(out) if as_jax else out)
    return jax.tree_util.tree_unflatten(treedef, merged)
