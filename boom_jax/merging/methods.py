"""Merge methods: pure functions over parameter trees, applied leaf by leaf.

Every method is registered in `MERGE_METHODS` and called as

    MERGE_METHODS[name](trees, weights=None, base=None, include=None, exclude=None, **params) -> tree

`trees` are K nested dicts with the same structure (numpy or jax arrays). Each leaf is merged on its
own (`merge_leaf`), in float64, and cast back to the leaf's dtype, so the result has the structure and
dtypes of the inputs (a bfloat16 leaf stays bfloat16). The streaming merge calls the same `merge_leaf`
on leaves read from disk, which is why it equals the in-memory merge exactly.

Names mean what mergekit's methods of the same name compute, with mergekit's defaults (its
merge_methods/ and sparsify.py, read for parity): the formulas, thresholds and epsilons are theirs.
Where mergekit has no answer (it raises, divides by zero, or has no such input) the behaviour is
documented on the method. The project's own variants are parameters with a non-default value
(multislerp tangent="log", slerp/karcher/model_stock given a base or weights mergekit does not take).

Per-parameter settings: `weights` and every method parameter may be a plain value or a dict from a
regular expression (matched with `re.fullmatch` against the leaf path, e.g. "encoder/layer_0/.*") to a
value, with an optional "default" key; the first matching pattern wins. The per-model parameters of
the task-vector family (density, gamma, epsilon) may also be a list of K values, one per model, as
mergekit's per-model `parameters:` are. `include` / `exclude` (a regex or a list of them) choose which
leaves are merged; any other leaf is copied from `base` when given, else from the first tree.

Every value is range-checked (`check_settings`, also called before a streaming merge reads a tensor)
and every merged leaf is checked finite, so a merge never returns NaN or infinite parameters.

The spherical and linear methods only ever produce a linear combination of the K inputs (and the
base). They are computed from the K x K Gram matrix of the flattened tensors and one combination pass,
both in chunks, so a leaf costs about one extra tensor of memory instead of K float64 copies.
`linear` and `multislerp` (mergekit's tangent projection) are sums over the members with per-member
scalars, so they are reduced one member at a time (`LeafMerge` with a method's `reducer`): a leaf
holds a float64 sum, not K inputs, which is what lets the streaming merge read one member at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from threadpoolctl import ThreadpoolController

from boom_jax.tree_paths import flatten_with_paths  # noqa: F401 (re-exported: merge callers import it here)

# Elements per member handled at once in the chunked Gram / combination passes: small enough that a
# float64 chunk of a few members stays in cache between its conversion and its use (1 << 17 merged a
# 31M-element pair 2.6x faster than 1 << 20, measured under load).
CHUNK_ELEMENTS = 1 << 17
# tangent="log" (the project's multislerp variant): a tangent vector shorter than this is zero.
TANGENT_EPS = 1e-12
# mergekit's constants (merge_methods/*.py, sparsify.py), kept under their meaning.
MULTISLERP_EPS = 1e-8  # multislerp: x / (|x| + eps), mean and tangent norms
SLERP_DOT_THRESHOLD = 0.9995  # slerp: |cos| above this interpolates linearly
SLERP_NORM_EPS = 1e-8  # slerp: a vector is normalized only when its norm exceeds this
NUSLERP_NORM_EPS = 1e-7  # nuslerp: norms clamped from below
NUSLERP_COLINEAR_EPS = 1e-8  # nuslerp: |sin theta| below this interpolates linearly
NUSLERP_WEIGHT_EPS = 1e-6  # nuslerp: |w0 + w1| below this gives t = 0.5
MODEL_STOCK_NORM_EPS = 1e-6  # model_stock: product of norms clamped from below
RESCALE_EPS = 1e-7  # sparsification rescale: skipped when either L1 norm is below this
LINEAR_DIVISOR_EPS = 1e-8  # task arithmetic normalize: |sum of weights| below this divides by 1
SCE_WEIGHT_EPS = 1e-6  # sce: total of the mean squares below this gives uniform weights
SCE_DIVISOR_EPS = 1e-6  # sce: divisor clamped from below

# The merge's BLAS products ([K, C] x [C, K] Gram chunks, K-vector combinations) run on one thread:
# they are memory-bound, so a second BLAS thread gains nothing, and on a busy machine its spin-waits
# for the other core cost more than the product (MiniLM, K = 5: 2.0-2.6 s of merge math with
# OpenBLAS's 2 threads, 0.75-0.95 s with one, measured under load). OpenBLAS partitions these
# products by output element, so the results are the same bits with any thread count.
BLAS_THREADS = 1

Tree = Any
PatternValue = Any  # a value, or a Mapping from regex (or "default") to a value


class MergeError(ValueError):
    """A merge that cannot be computed as asked (bad weights, missing base, out-of-range parameter...)."""


# ----------------------------------------------------------------------------------------------
# Paths, per-pattern values, filters


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


def pattern_values(value: PatternValue) -> list[Any]:
    """Every value a (possibly per-pattern) setting can take, for up-front range checks."""
    return list(value.values()) if isinstance(value, Mapping) else [value]


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


@functools.cache
def _blas_threads() -> ThreadpoolController:
    return ThreadpoolController()


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


def _norms(gram: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(np.diag(gram), 0.0))


def _qnorm(c: np.ndarray, gram: np.ndarray) -> float:
    """Norm of sum_i c_i x_i from the Gram matrix of the x_i."""
    return float(np.sqrt(max(float(c @ gram @ c), 0.0)))


# ----------------------------------------------------------------------------------------------
# Linear


def _linear_leaf(xs, weights, base, normalize: bool = True) -> np.ndarray:
    """mergekit linear: sum_i w_i x_i, divided by sum_i w_i when `normalize` (the default)."""
    w = weights / weights.sum() if normalize else weights
    return combine(xs, w, base)


# ----------------------------------------------------------------------------------------------
# Spherical methods. A vector sum_i c_i x_i of the (base-centred) inputs is held as its coefficients.


def _multislerp_leaf(xs, weights, base, tangent: str = "projection", eps: float = MULTISLERP_EPS,
                     normalize_weights: bool = True) -> np.ndarray:
    """mergekit multislerp: unit vectors u_i = x_i / (|x_i| + eps), mean direction m of sum w_i u_i,
    tangent vectors u_i - (u_i . m) m (a projection onto the tangent plane), their weighted sum t,
    result |x|_w (cos(|t|+eps) m + sin(|t|+eps) / (|t|+eps) t), x_i taken relative to the base.

    tangent="log" is the project's variant: the true log map theta / sin(theta) (u_i - cos(theta) m)
    (the exact Riemannian step; equal to the projection to first order, several percent apart on
    task vectors). When the weighted mean of the unit vectors vanishes (antipodal inputs with equal
    weights) mergekit returns the weighted average for K = 2 and raises for K > 2; here the weighted
    average is returned for any K.
    """
    if tangent not in ("projection", "log"):
        raise MergeError(f"multislerp: tangent must be 'projection' (mergekit) or 'log', got {tangent!r}")
    w = weights / weights.sum() if normalize_weights else weights
    stack = Stack(xs, base)
    gram = stack.gram()
    k = len(xs)
    if k == 1:
        return stack.combine(np.ones(1))
    norms = _norms(gram)
    if tangent == "log":
        return _multislerp_log(stack, gram, norms, w)
    a = 1.0 / (norms + eps)  # u_i = a_i x_i
    mean = w * a  # coefficients over x
    mean_norm = _qnorm(mean, gram)
    if mean_norm < eps:
        return stack.combine(w)
    mu = mean / mean_norm
    dots = a * (gram @ mu)  # u_i . mu
    tangent_sum = w * a - float(w @ dots) * mu
    size = _qnorm(tangent_sum, gram) + eps
    direction = math.cos(size) * mu + (math.sin(size) / size) * tangent_sum
    return stack.combine(float(norms @ w) * direction)


def _multislerp_log(stack: Stack, gram, norms, w) -> np.ndarray:
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    cos = gram * inv[:, None] * inv[None, :]  # unit-vector Gram
    mean = np.where(norms > 0, w, 0.0)
    size = float(np.sqrt(max(float(mean @ cos @ mean), 0.0)))
    if size < MULTISLERP_EPS:
        return stack.combine(w)
    mu = mean / size
    cos_theta = np.clip(cos @ mu, -1.0, 1.0)
    sin_theta = np.sqrt(np.maximum(1.0 - cos_theta**2, 0.0))
    theta = np.arctan2(sin_theta, cos_theta)
    safe = sin_theta > TANGENT_EPS
    scale = np.where(safe, theta / np.where(safe, sin_theta, 1.0), np.where(cos_theta > 0, 1.0, 0.0))
    wf = np.where(norms > 0, w * scale, 0.0)
    tangent_sum = wf - float(wf @ cos_theta) * mu
    tsize = float(np.sqrt(max(float(tangent_sum @ cos @ tangent_sum), 0.0)))
    direction = np.cos(tsize) * mu + np.sinc(tsize / np.pi) * tangent_sum
    return stack.combine(float(w @ norms) * direction * inv)


class _WeightedSum:
    """sum_i c_i (x_i - base) + base over members fed one at a time (`add`), in float64 chunks.

    The sum is held as `scale * acc`, `scale` being the first member's coefficient: the first member
    is only cast into `acc` (one pass), each later one adds c_i / scale times itself through one
    reused chunk buffer (no allocation per chunk), and `scale` is applied once, when the float32
    result is written."""

    def __init__(self, coeffs: np.ndarray, base: Any = None, scratch: np.ndarray | None = None):
        self.coeffs = np.asarray(coeffs, dtype=np.float64)
        self.base = None if base is None else _flat(base)
        self.scratch = scratch  # float64 memory to sum into, instead of a new array (LeafMerge)
        self.out: np.ndarray | None = None  # where to write the result, instead of a new array
        self.acc: np.ndarray | None = None
        self.scale = 1.0
        self.count = 0
        self._buffers: tuple[np.ndarray, np.ndarray] | None = None

    def _buffer(self, sl: slice, which: int = 0) -> np.ndarray:
        if self._buffers is None:
            n = min(CHUNK_ELEMENTS, self.acc.size)
            self._buffers = (np.empty(n), np.empty(n if self.base is not None else 0))
        return self._buffers[which][: sl.stop - sl.start]

    def _centred(self, flat: np.ndarray, sl: slice, out: np.ndarray) -> np.ndarray:
        """float64 flat[sl] - base[sl] written into `out` (both cast first: float64 arithmetic)."""
        np.copyto(out, flat[sl])
        if self.base is not None:
            base = self._buffer(sl, 1)
            np.copyto(base, self.base[sl])
            out -= base
        return out

    def _first(self, flat: np.ndarray, shape: tuple, squares: bool = False) -> float:
        """acc = the centred first member (its coefficient goes to `_set_scale`); returns its sum of
        squares when asked."""
        fits = self.scratch is not None and self.scratch.size >= flat.size
        self.acc = self.scratch[: flat.size] if fits else np.empty(flat.size)
        self.shape, self.dtype = shape, flat.dtype
        total = 0.0
        for sl in _chunk_slices(flat.size):
            chunk = self._centred(flat, sl, self.acc[sl])
            if squares:
                total += float(chunk @ chunk)
        return total

    def _set_scale(self, coeff: float) -> None:
        """The first member's coefficient becomes the sum's pending scale."""
        if coeff != 0.0 and math.isfinite(coeff):
            self.scale = coeff
        else:  # nothing to divide the later coefficients by: apply it now
            self.acc *= coeff
            self.scale = 1.0

    def _add_scaled(self, flat: np.ndarray, coeff: float, squares: bool = False) -> float:
        """acc += coeff / scale * (flat - base); returns the new acc's sum of squares when asked
        (taken chunk by chunk while the chunk is in cache, instead of another pass over acc)."""
        factor, total = coeff / self.scale, 0.0
        for sl in _chunk_slices(flat.size):
            chunk = self._centred(flat, sl, self._buffer(sl))
            chunk *= factor
            target = self.acc[sl]
            target += chunk
            if squares:
                total += float(target @ target)
        return total

    def add(self, x: Any) -> None:
        flat, coeff = _flat(x), float(self.coeffs[self.count])
        if self.acc is None:
            self._first(flat, np.shape(x))
            self._set_scale(coeff)
        else:
            self._add_scaled(flat, coeff)
        self.count += 1

    def _total(self, factor: float) -> np.ndarray:
        """factor * acc + base, written as the members' dtype."""
        out = self.out if self.out is not None else np.empty(self.acc.size, dtype=self.dtype)
        for sl in _chunk_slices(self.acc.size):
            if self.base is None:
                np.multiply(self.acc[sl], factor, out=out[sl], casting="same_kind")
            else:
                chunk = self._buffer(sl)
                np.multiply(self.acc[sl], factor, out=chunk)
                base = self._buffer(sl, 1)
                np.copyto(base, self.base[sl])
                chunk += base
                out[sl] = chunk
        return out.reshape(self.shape)

    def result(self) -> np.ndarray | None:
        return self._total(self.scale)


class _MultislerpSum(_WeightedSum):
    """mergekit's multislerp one member at a time. Its tangent vectors sum to zero in exact arithmetic
    (sum_i w_i (u_i - (u_i . m) m) = M - |M| m for M = sum_i w_i u_i and m = M / |M|), so the result is
    |x|_w M / |M|: each member adds w_i / (|x_i| + eps) x_i to M and w_i |x_i| to |x|_w. The first
    member's norm is summed while it is cast into the sum; a later one needs its norm before it is
    added, so it is read twice. The Gram formula (`_multislerp_leaf`) gives the same to rounding; it
    is used when |M| < eps."""

    def __init__(self, weights: np.ndarray, base: Any, eps: float, scratch: np.ndarray | None = None):
        super().__init__(weights, base, scratch)
        self.eps, self.norm_sum, self.acc_squares = eps, 0.0, 0.0

    def add(self, x: Any) -> None:
        flat, w = _flat(x), float(self.coeffs[self.count])
        if self.acc is None:
            norm = math.sqrt(self._first(flat, np.shape(x), squares=True))
            self._set_scale(w / (norm + self.eps))
        else:
            squares = 0.0
            for sl in _chunk_slices(flat.size):
                chunk = self._centred(flat, sl, self._buffer(sl))
                squares += float(chunk @ chunk)
            norm = math.sqrt(squares)
            last = self.count == len(self.coeffs) - 1
            self.acc_squares = self._add_scaled(flat, w / (norm + self.eps), squares=last)
        self.norm_sum += w * norm
        self.count += 1

    def result(self) -> np.ndarray | None:
        mean_norm = abs(self.scale) * math.sqrt(self.acc_squares)  # |M|, M = scale * acc
        if mean_norm < self.eps:
            return None  # the weighted mean of the unit vectors vanishes: the Gram formula's fallback
        return self._total(self.scale * self.norm_sum / mean_norm)


def _linear_reducer(weights, base, scratch, normalize: bool = True) -> _WeightedSum:
    return _WeightedSum(weights / weights.sum() if normalize else weights, base, scratch)


def _multislerp_reducer(weights, base, scratch, tangent: str = "projection", eps: float = MULTISLERP_EPS,
                        normalize_weights: bool = True) -> _MultislerpSum | None:
    if tangent != "projection" or len(weights) == 1:
        return None
    return _MultislerpSum(weights / weights.sum() if normalize_weights else weights, base, eps, scratch)


def _karcher_leaf(xs, weights, base, max_iter: int = 10, tol: float = 1e-5) -> np.ndarray:
    """mergekit karcher: the Riemannian mean of the unit vectors (Karcher iteration from the
    normalized weighted mean, `max_iter` steps, stopping when the step is shorter than `tol`), scaled
    by the weighted mean norm. Inputs of norm <= tol take no part in the direction.

    mergekit always weights the models equally (and treats a base model as one more input); here the
    given weights are used (equal by default) and a base makes the inputs task vectors.
    """
    stack = Stack(xs, base)
    gram = stack.gram()
    norms = _norms(gram)
    k = len(xs)
    if k == 1:
        return stack.combine(np.ones(1))
    weights = weights / weights.sum()
    inv = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    cos = gram * inv[:, None] * inv[None, :]
    valid = norms > tol
    if not valid.any():
        return stack.combine(np.zeros(k))
    alphas = np.where(valid, weights, 0.0)
    alphas = alphas / alphas.sum()

    def unorm(c):
        return float(np.sqrt(max(float(c @ cos @ c), 0.0)))

    u = alphas.copy()
    size = unorm(u)
    if size < tol:
        u = np.eye(k)[int(np.argmax(valid))]
    else:
        u = u / size
    for _ in range(int(max_iter)):
        dots = np.clip(cos @ u, -1.0, 1.0)
        theta = np.arccos(dots)
        step = np.zeros(k)
        for i in np.flatnonzero(valid):
            if theta[i] < tol:
                continue
            sin = math.sin(theta[i])
            if sin == 0.0:  # exactly antipodal: no direction (mergekit divides by zero)
                continue
            f = alphas[i] * theta[i] / sin
            step[i] += f
            step -= f * dots[i] * u
        step_norm = unorm(step)
        if step_norm < tol:
            break
        u = math.cos(step_norm) * u + math.sin(step_norm) * (step / step_norm)
        size = unorm(u)
        if size > tol:
            u = u / size
    scale = float(weights @ norms)
    return stack.combine(scale * u * inv)


def _slerp_leaf(xs, weights, base, t: float | None = None, dot_threshold: float = SLERP_DOT_THRESHOLD) -> np.ndarray:
    """mergekit slerp from trees[0] (t = 0) to trees[1] (t = 1): normalize each (when its norm exceeds
    1e-8), interpolate linearly when |cos| > dot_threshold (0.9995), else
    (sin((1-t) theta) x0 + sin(t theta) x1) / sin(theta).

    `t` defaults to the normalized weights[1]. mergekit's base model is the t = 0 endpoint, i.e.
    trees[0] here; a `base` given besides the two trees is the project's variant (slerp of the task
    vectors x_i - base, added back to the base).
    """
    if len(xs) != 2:
        raise MergeError(f"slerp merges exactly 2 models, got {len(xs)} (use multislerp for more)")
    t = float(weights[1] / weights.sum()) if t is None else float(t)
    stack = Stack(xs, base)
    gram = stack.gram()
    norms = _norms(gram)
    scale = np.where(norms > SLERP_NORM_EPS, norms, 1.0)
    dot = float(gram[0, 1] / (scale[0] * scale[1]))
    if abs(dot) > dot_threshold:
        return stack.combine(np.array([1.0 - t, t]))
    theta = math.acos(dot)
    sin = math.sin(theta)
    return stack.combine(np.array([math.sin(theta - t * theta) / sin, math.sin(t * theta) / sin]))


def _nuslerp_leaf(xs, weights, base, nuslerp_flatten: bool = True, nuslerp_row_wise: bool = False) -> np.ndarray:
    """mergekit nuslerp: slerp of the two models (task vectors with a base) at t = w1 / (w0 + w1)
    (0.5 when |w0 + w1| < 1e-6), on the flattened tensors, linear when |sin theta| < 1e-8.

    Only the flattened form (mergekit's default) is offered: its row-wise form depends on torch's
    [out, in] layout, which Flax kernels ([in, out]) do not share.
    """
    if len(xs) != 2:
        raise MergeError(f"nuslerp merges exactly 2 models (plus an optional base), got {len(xs)}")
    if not nuslerp_flatten:
        raise MergeError("nuslerp: nuslerp_flatten=False (row-wise slerp) is not supported; use the default True")
    total = float(weights.sum())
    t = 0.5 if abs(total) < NUSLERP_WEIGHT_EPS else float(weights[1]) / total
    stack = Stack(xs, base)
    gram = stack.gram()
    norms = np.maximum(_norms(gram), NUSLERP_NORM_EPS)
    cos = float(np.clip(gram[0, 1] / (norms[0] * norms[1]), -1.0, 1.0))
    theta = math.acos(cos)
    sin = math.sin(theta)
    if abs(sin) < NUSLERP_COLINEAR_EPS:
        return stack.combine(np.array([1.0 - t, t]))
    return stack.combine(np.array([math.sin((1.0 - t) * theta), math.sin(t * theta)]) / sin)


def _model_stock_leaf(xs, weights, base, filter_wise: bool = False) -> np.ndarray:
    """mergekit model_stock (Jang et al. 2024): base + t (mean - base), t = K c / (1 + (K - 1) c),
    c the mean pairwise cosine of the task vectors (norm products clamped at 1e-6, no other clipping).

    mergekit takes an unweighted mean; weights here make it a weighted mean (equal by default).
    """
    if filter_wise:
        raise MergeError("model_stock: filter_wise=True (per-row angles) is not supported; use the default False")
    k = len(xs)
    if k < 2:
        raise MergeError(f"model_stock needs at least 2 models besides the base, got {k}")
    stack = Stack(xs, base)
    gram = stack.gram()
    norms = _norms(gram)
    cos = [float(np.clip(gram[i, j] / max(norms[i] * norms[j], MODEL_STOCK_NORM_EPS), -1.0, 1.0))
           for i in range(k) for j in range(i + 1, k)]
    c = float(np.mean(cos))
    t = k * c / (1.0 + (k - 1) * c)
    return stack.combine(t * weights / weights.sum())


# ----------------------------------------------------------------------------------------------
# Generalized task arithmetic (mergekit's generalized_task_arithmetic.py and sparsify.py):
# task vectors, sparsified one by one, weighted, optionally sign-elected, summed, normalized.


def _rng(seed: int, path: str, member: int) -> np.random.Generator:
    """The random stream of one member's leaf: depends only on (seed, leaf path, member index), so
    results do not depend on the order leaves are visited in (in-memory and streaming merges agree)."""
    return np.random.default_rng([int(seed), zlib.crc32(path.encode()), int(member)])


def rescale_l1(tensor: np.ndarray, masked: np.ndarray, rescale: bool) -> np.ndarray:
    """mergekit's rescaled_masked_tensor with the L1 norm: masked * |tensor|_1 / |masked|_1."""
    if not rescale:
        return masked
    before, after = np.abs(tensor).sum(), np.abs(masked).sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return masked
    return masked * (before / after)


def sparsify_magnitude(delta: np.ndarray, density: float, rescale: bool) -> np.ndarray:
    """Keep the int(density * n) largest magnitudes (TIES trim). mergekit asserts at least one is
    kept; a tensor too small for one is zeroed here."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    keep = int(density * flat.size)
    mask = np.zeros(flat.size)
    if keep > 0:
        mask[np.argsort(-np.abs(flat), kind="stable")[:keep]] = 1.0
    return rescale_l1(delta, delta * mask.reshape(delta.shape), rescale)


def sparsify_random(delta: np.ndarray, density: float, rescale: bool, rng: np.random.Generator) -> np.ndarray:
    """DARE: keep each entry with probability `density` (a seeded Bernoulli draw), then rescale."""
    if density >= 1:
        return delta
    mask = (rng.random(delta.shape) < density).astype(np.float64)
    return rescale_l1(delta, delta * mask, rescale)


def sparsify_magnitude_outliers(delta: np.ndarray, density: float, gamma: float, rescale: bool) -> np.ndarray:
    """Model Breadcrumbs: drop the int(gamma * n) largest magnitudes and the smallest ones, keeping
    int(density * n). mergekit's slice indices[n_bot:-n_top] is empty when n_top is 0 (zeroing the
    tensor); here the kept range is [n_bot, n - n_top), which is the same whenever n_top >= 1."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    n = flat.size
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = n - target - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    order = np.argsort(np.abs(flat), kind="stable")
    mask = np.zeros(n)
    mask[order[n_bot:n - n_top]] = 1.0
    return rescale_l1(delta, delta * mask.reshape(delta.shape), rescale)


def della_probabilities(delta: np.ndarray, density: float, epsilon: float) -> np.ndarray:
    """DELLA MagPrune keep probabilities: density - epsilon + 2 epsilon (rank - 1) / (n - 1), ranks
    of |delta| along axis 1 of each row (a 1-D tensor is one row). The ranks are taken over the
    tensor as stored: mergekit's rows are torch's [out, in] rows, a Flax kernel is [in, out]."""
    rows = delta.reshape(1, -1) if delta.ndim < 2 else delta
    ranks = np.argsort(np.argsort(np.abs(rows), axis=1, kind="stable"), axis=1, kind="stable").astype(np.float64) + 1
    lo, hi = ranks.min(axis=1, keepdims=True), ranks.max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)  # a one-element row (mergekit: 0 / 0) gets rank 0
    rank_norm = np.clip((ranks - lo) / span, 0.0, 1.0)
    return ((density - epsilon) + rank_norm * 2 * epsilon).reshape(delta.shape)


def sparsify_della(delta: np.ndarray, density: float, epsilon: float, rescale: bool, rng: np.random.Generator) -> np.ndarray:
    """DELLA: keep each entry with its MagPrune probability (a seeded Bernoulli draw), then rescale."""
    if density >= 1:
        return delta
    if not (0 < density - epsilon and density + epsilon < 1):
        raise MergeError(f"della: epsilon={epsilon} must keep density +/- epsilon in (0, 1) (density={density})")
    mask = (rng.random(delta.shape) < della_probabilities(delta, density, epsilon)).astype(np.float64)
    return rescale_l1(delta, delta * mask, rescale)


def sign_consensus(weighted: np.ndarray) -> np.ndarray:
    """TIES sign election ('sum'): the majority sign is that of the sum (+ on ties); a member agrees
    where its sign equals it (a zero entry never agrees)."""
    majority = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0)
    return np.sign(weighted) == majority[None]


@dataclasses.dataclass(frozen=True)
class TaskArithmeticFamily:
    """One member of mergekit's generalized task arithmetic: consensus x sparsification, defaults."""

    sparsification: str | None  # None | magnitude | random | magnitude_outliers | della
    consensus: bool
    default_normalize: bool
    default_rescale: bool

    def leaf(self, xs, weights, base, *, path: str, density: Any = 1.0, lambda_: float = 1.0,
             normalize: bool | None = None, rescale: bool | None = None, seed: int = 0,
             gamma: Any = 0.01, epsilon: Any = 0.15, int8_mask: bool = False) -> np.ndarray:
        k = len(xs)
        normalize = self.default_normalize if normalize is None else bool(normalize)
        rescale = self.default_rescale if rescale is None else bool(rescale)
        dens, gam, eps = (per_model(v, k, n) for v, n in ((density, "density"), (gamma, "gamma"), (epsilon, "epsilon")))
        b = np.asarray(base, np.float64)
        if self.sparsification is None and not self.consensus:  # plain task arithmetic: chunked
            divisor = float(weights.sum())
            scale = 1.0 / (divisor if abs(divisor) >= LINEAR_DIVISOR_EPS else 1.0) if normalize else 1.0
            return combine(xs, float(lambda_) * scale * weights, base)
        deltas = np.stack([np.asarray(x, np.float64) - b for x in xs])
        for i in range(k):
            deltas[i] = self._sparsify(deltas[i], dens[i], gam[i], eps[i], rescale, seed, path, i)
        wb = weights.reshape((k,) + (1,) * b.ndim)
        weighted = deltas * wb
        if self.consensus:
            mask = sign_consensus(weighted)
            mixed = np.where(mask, weighted, 0.0).sum(axis=0)
            divisor = np.where(mask, wb, 0.0).sum(axis=0)
            divisor = np.where(divisor == 0, 1.0, divisor)
        else:
            mixed = weighted.sum(axis=0)
            divisor = float(weights.sum())
            divisor = divisor if abs(divisor) >= LINEAR_DIVISOR_EPS else 1.0
        if normalize:
            mixed = mixed / divisor
        return b + float(lambda_) * mixed

    def _sparsify(self, delta, density, gamma, epsilon, rescale, seed, path, i) -> np.ndarray:
        if self.sparsification is None:
            return delta
        if self.sparsification == "magnitude":
            return sparsify_magnitude(delta, density, rescale)
        if self.sparsification == "random":
            return sparsify_random(delta, density, rescale, _rng(seed, path, i))
        if self.sparsification == "magnitude_outliers":
            return sparsify_magnitude_outliers(delta, density, gamma, rescale)
        return sparsify_della(delta, density, epsilon, rescale, _rng(seed, path, i))


def per_model(value: Any, k: int, name: str) -> list[float]:
    """A per-model parameter (a number, or a list of K numbers) as K floats."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != k:
            raise MergeError(f"{name}: expected one value per model ({k}), got {len(value)}: {list(value)}")
        return [float(v) for v in value]
    return [float(value)] * k


def _sce_leaf(xs, weights, base, select_topk: float = 1.0, int8_mask: bool = False) -> np.ndarray:
    """mergekit sce (Wan et al. 2024): keep the select_topk fraction of entries with the largest
    variance across the task vectors, weight each task vector by its mean square (uniform when their
    total is below 1e-6), TIES sign election, divide by the agreeing weights (clamped at 1e-6)."""
    k = len(xs)
    b = np.asarray(base, np.float64)
    tvs = np.stack([np.asarray(x, np.float64) - b for x in xs])
    if select_topk < 1:
        var = tvs.var(axis=0)
        keep = int(np.count_nonzero(var) * select_topk)
        mask = np.zeros(var.size)
        if keep > 0:
            mask[np.argsort(-np.abs(var.reshape(-1)), kind="stable")[:keep]] = 1.0
        tvs = tvs * mask.reshape(var.shape)[None]
    erase = sign_consensus(tvs)
    tv_weights = (tvs**2).reshape(k, -1).mean(axis=1)
    total = float(tv_weights.sum())
    tv_weights = np.full(k, 1.0 / k) if abs(total) < SCE_WEIGHT_EPS else tv_weights / total
    erased = np.where(erase, tv_weights.reshape((k,) + (1,) * b.ndim), 0.0)
    merged = (tvs * erased).sum(axis=0)
    return b + merged / np.maximum(erased.sum(axis=0), SCE_DIVISOR_EPS)


# ----------------------------------------------------------------------------------------------
# Parameter checks: each parameter's range, named in the error.


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_each(name: str, value: Any, ok: Callable[[float], bool], what: str, per_model_ok: bool = False) -> None:
    for v in pattern_values(value):
        items = list(v) if per_model_ok and isinstance(v, (list, tuple)) else [v]
        for item in items:
            if not _is_number(item) or not math.isfinite(float(item)) or not ok(float(item)):
                raise MergeError(f"{name}={item!r} must be {what}")


def _check_bool(name: str, value: Any) -> None:
    for v in pattern_values(value):
        if not isinstance(v, (bool, np.bool_)):
            raise MergeError(f"{name}={v!r} must be true or false")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    for v in pattern_values(value):
        if v not in choices:
            raise MergeError(f"{name}={v!r} must be one of {choices}")


def _check_int(name: str, value: Any, low: int) -> None:
    for v in pattern_values(value):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise MergeError(f"{name}={v!r} must be an integer >= {low}")


PARAM_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "density": lambda n, v: _check_each(n, v, lambda x: 0 < x <= 1, "in (0, 1]", per_model_ok=True),
    "gamma": lambda n, v: _check_each(n, v, lambda x: 0 <= x < 1, "in [0, 1)", per_model_ok=True),
    "epsilon": lambda n, v: _check_each(n, v, lambda x: 0 <= x < 1, "in [0, 1)", per_model_ok=True),
    "lambda_": lambda n, v: _check_each(n, v, lambda x: True, "a finite number"),
    "t": lambda n, v: _check_each(n, v, lambda x: 0 <= x <= 1, "in [0, 1]"),
    "dot_threshold": lambda n, v: _check_each(n, v, lambda x: 0 < x <= 1, "in (0, 1]"),
    "select_topk": lambda n, v: _check_each(n, v, lambda x: 0 < x <= 1, "in (0, 1]"),
    "tol": lambda n, v: _check_each(n, v, lambda x: x > 0, "a finite number > 0"),
    "eps": lambda n, v: _check_each(n, v, lambda x: x > 0, "a finite number > 0"),
    "max_iter": lambda n, v: _check_int(n, v, 1),
    "seed": lambda n, v: _check_int(n, v, 0),
}
PARAM_CHECKS["tangent"] = lambda n, v: _check_choice(n, v, ("projection", "log"))
for _flag in ("normalize", "rescale", "int8_mask", "normalize_weights", "nuslerp_flatten", "nuslerp_row_wise", "filter_wise"):
    PARAM_CHECKS[_flag] = _check_bool


# ----------------------------------------------------------------------------------------------
# Registry


@dataclasses.dataclass(frozen=True)
class MergeMethod:
    """A registered method: its leaf function and how it treats weights and the base."""

    name: str
    leaf_fn: Callable[..., np.ndarray]
    description: str
    needs_base: bool = False
    params: tuple[str, ...] = ()
    wants_path: bool = False
    negative_weights: bool = False  # task negation: the weights may be < 0
    takes_weights: bool = True  # False: the method computes its own weights (sce)
    mergekit_name: str | None = ""  # "" = the same name in mergekit; None = no mergekit counterpart
    # (weights, base, scratch, **params) -> an object taking one member at a time (add, result), or
    # None where these parameters need all K leaves at once; see LeafMerge.
    reducer: Callable[..., Any] | None = None

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


_GTA_PARAMS = ("density", "lambda_", "normalize", "rescale", "int8_mask")


def _gta(name: str, sparsification: str | None, consensus: bool, normalize: bool, rescale: bool, description: str,
         extra: tuple[str, ...] = ()) -> MergeMethod:
    family = TaskArithmeticFamily(sparsification, consensus, normalize, rescale)
    random = sparsification in ("random", "della")
    return MergeMethod(
        name, family.leaf, description, needs_base=True,
        params=_GTA_PARAMS + extra + (("seed",) if random else ()),
        wants_path=True, negative_weights=not consensus,
    )


_METHODS = [
    MergeMethod("linear", _linear_leaf, "weighted average of the parameters (normalize=False: weighted sum)", params=("normalize",),
                reducer=_linear_reducer),
    MergeMethod("slerp", _slerp_leaf, "spherical interpolation from the first model (t=0) to the second (t=1); t default weights[1]",
                params=("t", "dot_threshold")),
    MergeMethod("nuslerp", _nuslerp_leaf, "slerp of 2 models at t = w1/(w0+w1), of their task vectors when a base is given",
                params=("nuslerp_flatten", "nuslerp_row_wise")),
    MergeMethod("multislerp", _multislerp_leaf,
                "spherical weighted mean: tangent-plane projection at the mean direction (mergekit), tangent='log' for the true log map",
                params=("tangent", "eps", "normalize_weights"), reducer=_multislerp_reducer),
    MergeMethod("karcher", _karcher_leaf, "iterative Karcher (Riemannian) mean on the sphere, weighted mean norm", params=("max_iter", "tol")),
    _gta("task_arithmetic", None, False, False, False, "base + lambda_ * sum_i w_i (theta_i - base); weights as given (default 1/K)"),
    _gta("ties", "magnitude", True, True, False, "trim task vectors to the top density, elect signs, disjoint weighted mean"),
    _gta("dare_linear", "random", False, False, True, "seeded random drop (keep density), L1 rescale, weighted sum of task vectors"),
    _gta("dare_ties", "random", True, False, True, "seeded random drop (keep density), L1 rescale, TIES sign election, weighted sum"),
    _gta("breadcrumbs", "magnitude_outliers", False, False, False,
         "drop the gamma largest and the smallest task-vector entries (keep density), weighted sum", extra=("gamma",)),
    _gta("breadcrumbs_ties", "magnitude_outliers", True, False, False,
         "breadcrumbs sparsification, then TIES sign election", extra=("gamma",)),
    _gta("della", "della", True, True, True, "DELLA: magnitude-ranked random drop (density +/- epsilon), rescale, TIES", extra=("epsilon",)),
    _gta("della_linear", "della", False, False, True, "DELLA drop and rescale, weighted sum of task vectors", extra=("epsilon",)),
    MergeMethod("sce", _sce_leaf, "SCE: select high-variance entries (select_topk), weights from task-vector energy, TIES signs",
                needs_base=True, params=("select_topk", "int8_mask"), takes_weights=False),
    MergeMethod("model_stock", _model_stock_leaf, "Model Stock: interpolate the mean and the base by the task-vector angle",
                needs_base=True, params=("filter_wise",)),
]
MERGE_METHODS: dict[str, MergeMethod] = {m.name: m for m in _METHODS}


def get_method(name: str) -> MergeMethod:
    """The registered method `name`, or an error listing the known ones."""
    if name not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {name!r}; known: {', '.join(MERGE_METHODS)}")
    return MERGE_METHODS[name]


def _check_weight_values(m: MergeMethod, w: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(w)):
        raise MergeError(f"{m.name}: weights{where} must be finite, got {list(map(float, w))}")
    if not m.negative_weights and np.any(w < 0):
        raise MergeError(f"{m.name}: weights{where} must be >= 0, got {list(map(float, w))} "
                         "(negative weights: task_arithmetic, dare_linear, breadcrumbs, della_linear)")


def check_settings(method: str | MergeMethod, k: int | None, weights: PatternValue = None, **params: Any) -> MergeMethod:
    """Every weight and parameter value of a merge of `k` models (None: not known yet, counts are not
    checked) checked against its range, before any tensor is read; returns the method. Errors name
    the parameter and the value."""
    m = method if isinstance(method, MergeMethod) else get_method(method)
    if k is not None and k < 1:
        raise MergeError(f"{m.name}: nothing to merge (no input models)")
    unknown = sorted(set(params) - set(m.params))
    if unknown:
        raise MergeError(f"{m.name}: unknown parameter(s) {unknown}; accepted: {list(m.params) or 'none'}")
    if weights is not None and not m.takes_weights:
        raise MergeError(f"{m.name}: takes no weights (it computes its own); remove them")
    for value in pattern_values(weights):
        if value is None:
            continue
        w = np.asarray(value, dtype=np.float64).reshape(-1)
        if k is not None and w.size != k:
            raise MergeError(f"{m.name}: weights: expected {k} values (one per model), got {w.size}: {list(map(float, w))}")
        _check_weight_values(m, w, "")
    for name, value in params.items():
        try:
            PARAM_CHECKS.get(name, lambda n, v: None)(name, value)
            if name in ("density", "gamma", "epsilon") and k is not None:
                for v in pattern_values(value):
                    per_model(v, k, name)
        except MergeError as e:
            raise MergeError(f"{m.name}: {e}") from None
    return m


def leaf_weights(method: MergeMethod, weights: PatternValue, path: str, k: int) -> np.ndarray:
    """The K weights that apply to leaf `path` (default 1/K each), checked."""
    value = resolve_for_path(weights, path, "weights")
    if value is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(value, dtype=np.float64).reshape(-1)
    if w.size != k:
        raise MergeError(f"weights for {path!r}: expected {k} values (one per model), got {w.size}: {list(map(float, w))}")
    _check_weight_values(method, w, f" for {path!r}")
    total = w.sum()
    if method.name in ("linear", "slerp", "multislerp", "karcher", "model_stock") and total == 0:
        raise MergeError(f"{method.name}: weights for {path!r} sum to 0; cannot normalize {list(w)}")
    return w


class LeafMerge:
    """The merge of one parameter (leaf `path` of K models), fed one member's leaf at a time.

    `add` takes the members in order; `finish` returns the merged numpy array in the leaf's dtype.
    A method with a `reducer` (linear, multislerp) folds each member into a float64 sum and keeps
    none of them; any other method keeps the K leaves until `finish`. Where a reducer cannot answer
    (multislerp's vanishing mean direction), `finish` calls the method's leaf function on
    `all_leaves()`, the K leaves read again. `scratch`, float64 memory of at least the leaf's size,
    is where a reducer sums instead of a new array (a streaming merge reuses one block for every
    group, so its pages are faulted in once); it must stay untouched until `finish`. With
    `reuse_last` (the leaves are the merge's own reads, not the caller's arrays) a reducer writes the
    result over the last member's leaf instead of a new array. Raises MergeError when a parameter is
    out of range or the merged values are not finite."""

    def __init__(
        self,
        method: str | MergeMethod,
        path: str,
        k: int,
        base_leaf: Any = None,
        weights: PatternValue = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        scratch: np.ndarray | None = None,
        reuse_last: bool = False,
        **params: Any,
    ):
        m = method if isinstance(method, MergeMethod) else get_method(method)
        if k < 1:
            raise MergeError(f"{m.name}: nothing to merge (no input models)")
        unknown = sorted(set(params) - set(m.params))
        if unknown:
            raise MergeError(f"{m.name}: unknown parameter(s) {unknown}; accepted: {list(m.params) or 'none'}")
        if m.needs_base and base_leaf is None:
            raise MergeError(f"{m.name} works on task vectors and needs a base model (base=...)")
        if weights is not None and not m.takes_weights:
            raise MergeError(f"{m.name}: takes no weights (it computes its own); remove them")
        self.m, self.path, self.k, self.weights, self.params = m, path, k, weights, params
        self.base = None if base_leaf is None else np.asarray(base_leaf)
        self.selected = is_selected(path, include, exclude)
        self.mode = ""  # set by the first member: copy, equal, reduce or collect
        self.kept: np.ndarray | None = None  # copy / equal: the leaf to return
        self.leaves: list[np.ndarray] = []  # collect: the K leaves
        self.reducer: Any = None
        self.scratch, self.reuse_last = scratch, reuse_last
        self.unequal = False
        self.count = 0

    def _start(self, x: np.ndarray) -> None:
        self.dtype, self.shape = x.dtype, x.shape
        if not self.selected:
            self.mode, self.kept = "copy", x if self.base is None else self.base
            return
        if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
            self.mode, self.kept = "equal", x
            return
        self.w = leaf_weights(self.m, self.weights, self.path, self.k)
        self.leaf_params = {k: resolve_for_path(v, self.path, k) for k, v in self.params.items()}
        for name, value in self.leaf_params.items():
            PARAM_CHECKS.get(name, lambda n, v: None)(name, value)
        if self.m.wants_path:
            self.leaf_params["path"] = self.path
        if self.m.reducer is not None:
            self.reducer = self.m.reducer(self.w, self.base, self.scratch, **self.leaf_params)
        self.mode = "collect" if self.reducer is None else "reduce"

    def add(self, leaf: Any) -> None:
        """Takes the next member's leaf (members in the order of the weights)."""
        x = np.asarray(leaf)
        if self.count == 0:
            self._start(x)
        elif self.mode == "equal":
            self.unequal = self.unequal or not np.array_equal(self.kept, x)
        if self.mode == "reduce":
            with _merge_math():
                self.reducer.add(x)
            if self.reuse_last and self.count == self.k - 1 and x.flags.writeable and x.flags.c_contiguous:
                self.reducer.out = x.reshape(-1)  # consumed: the result is written over it
        elif self.mode == "collect":
            self.leaves.append(x)
        self.count += 1

    def finish(self, all_leaves: Callable[[], Sequence[Any]] | None = None) -> np.ndarray:
        """The merged leaf; `all_leaves` gives the K leaves again where a reducer needs them."""
        if self.count != self.k:
            raise MergeError(f"{self.path!r}: {self.count} of {self.k} models' leaves were given")
        if self.mode in ("copy", "equal"):
            if self.unequal:
                raise MergeError(f"{self.path!r}: cannot merge differing non-float parameters of dtype {self.dtype}")
            return np.array(self.kept, copy=True)
        with _merge_math():
            out = self.reducer.result() if self.mode == "reduce" else None
            if out is None:
                xs = self.leaves if self.mode == "collect" else [np.asarray(x) for x in all_leaves()]
                out = np.asarray(self.m.leaf_fn(xs, self.w, self.base, **self.leaf_params))
        self.leaves, self.reducer = [], None
        if not np.all(np.isfinite(out)):
            bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
            raise MergeError(f"{self.m.name}: merged parameter {self.path!r} has {bad} non-finite value(s) of {np.size(out)}; "
                             f"check the inputs, weights and parameters ({ {k: v for k, v in self.params.items()} or 'defaults'})")
        return out.astype(self.dtype, copy=False).reshape(self.shape)


@contextlib.contextmanager
def _merge_math() -> Iterator[None]:
    """Floating-point warnings off (merged values are checked finite) and BLAS on BLAS_THREADS."""
    with (np.errstate(over="ignore", invalid="ignore", divide="ignore"),
          _blas_threads().limit(limits=BLAS_THREADS, user_api="blas")):
        yield


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
    """Merge one parameter (the same leaf `path` of K models) into a numpy array of its dtype.

    Raises MergeError when a parameter is out of range or the merged values are not finite."""
    merge = LeafMerge(method, path, len(leaves), base_leaf, weights, include, exclude, **params)
    for leaf in leaves:
        merge.add(leaf)
    return merge.finish(lambda: leaves)


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
    check_settings(m, len(trees), weights, **params)
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
