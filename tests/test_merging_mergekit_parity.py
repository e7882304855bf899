"""Each merge method against a float64 NumPy transcription of mergekit's formula of the same name.

The references below transcribe mergekit's merge_methods/*.py and sparsify.py (torch -> NumPy, on the
flattened vectors, no Gram matrices), with mergekit's defaults and epsilons. The random sparsifiers
(dare_*, della*) draw their Bernoulli masks from the project's documented stream
(numpy default_rng([seed, crc32(path), member]).random(shape) < p), since torch's stream cannot be
reproduced; everything else is mergekit's. Inputs: random float64 tensors (2-D and 1-D), a base,
unnormalized weights, antipodal and cancelling inputs. Tolerance 1e-6 relative.
"""

import zlib

import numpy as np
import pytest

from boom_jax.merging import methods
from boom_jax.merging.methods import MERGE_METHODS, MergeError

RTOL = 1e-6
SHAPES = {"w": (12, 10), "b": (7,)}  # a 2-D and a 1-D tensor (breadcrumbs: 120 entries -> n_top >= 1)


def _trees(seed, k, scale=1.0):
    rng = np.random.default_rng(seed)
    return [{p: scale * rng.normal(size=s) for p, s in SHAPES.items()} for _ in range(k)]


def _near(base, seed, k, spread=0.3):
    """k models around `base` sharing a common task direction (positive mean cosine)."""
    rng = np.random.default_rng(seed)
    shared = {p: rng.normal(size=s) for p, s in SHAPES.items()}
    return [{p: base[p] + shared[p] + spread * rng.normal(size=s) for p, s in SHAPES.items()} for _ in range(k)]


BASE = _trees(100, 1)[0]
TREES = _trees(0, 3)
NEAR = _near(BASE, 1, 3)
W = [0.3, 1.7, 0.9]  # not normalized


def _close(got, want, rtol=RTOL):
    want = np.asarray(want, np.float64)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1e-300))


# ---- transcriptions of mergekit (float64) ----


def mk_linear(xs, w, normalize=True):
    w = np.asarray(w, np.float64)
    res = sum(wi * x for wi, x in zip(w, xs))
    return res / w.sum() if normalize else res


def mk_multislerp(xs, w, base=None, eps=1e-8):
    shape = xs[0].shape
    t = np.stack([x.ravel() for x in xs])
    if base is not None:
        t = t - base.ravel()
    w = np.asarray(w, np.float64)
    w = w / w.sum()
    norms = np.linalg.norm(t, axis=-1, keepdims=True)
    unit = t / (norms + eps)
    mean = (unit * w[:, None]).sum(0)
    mean_norm = np.linalg.norm(mean)
    if mean_norm < eps:
        assert len(xs) == 2  # mergekit raises for more
        res = t[0] * w[0] + t[1] * w[1]
    else:
        mean = mean / mean_norm
        dots = (unit * mean).sum(-1, keepdims=True)
        tangent = unit - dots * mean
        tr = (tangent * w[:, None]).sum(0)
        tn = np.linalg.norm(tr) + eps
        res = (mean * np.cos(tn) + tr * (np.sin(tn) / tn)) * (norms[:, 0] * w).sum()
    if base is not None:
        res = res + base.ravel()
    return res.reshape(shape)


def mk_slerp(t, v0, v1, threshold=0.9995, eps=1e-8):
    def normalize(v):
        n = np.linalg.norm(v)
        return v / n if n > eps else v

    a, b = normalize(v0), normalize(v1)
    dot = np.sum(a * b)
    if np.abs(dot) > threshold:
        return (1 - t) * v0 + t * v1
    theta0 = np.arccos(dot)
    s0 = np.sin(theta0 - theta0 * t) / np.sin(theta0)
    s1 = np.sin(theta0 * t) / np.sin(theta0)
    return s0 * v0 + s1 * v1


def mk_nuslerp(weights, v0, v1, base=None):
    t = 0.5 if abs(sum(weights)) < 1e-6 else weights[1] / sum(weights)
    if base is not None:
        v0, v1 = v0 - base, v1 - base
    a, b = v0.ravel(), v1.ravel()
    au = a / max(np.linalg.norm(a), 1e-7)
    bu = b / max(np.linalg.norm(b), 1e-7)
    theta = np.arccos(np.clip(np.sum(au * bu), -1, 1))
    s = np.sin(theta)
    if abs(s) < 1e-8:
        res = (1 - t) * a + t * b
    else:
        res = (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / s
    res = res.reshape(v0.shape)
    return res if base is None else base + res


def mk_karcher(xs, max_iter=10, tol=1e-5):
    alphas = [1.0 / len(xs)] * len(xs)
    norms, units = [], []
    for x in xs:
        n = np.linalg.norm(x)
        norms.append(n)
        units.append(np.zeros_like(x) if n == 0 else x / n)
    valid = [i for i, n in enumerate(norms) if n > tol]
    va = [alphas[i] for i in valid]
    va = [a / sum(va) for a in va]
    vu = [units[i] for i in valid]
    u = sum(a * ui for a, ui in zip(va, vu))
    nu = np.linalg.norm(u)
    u = vu[0].copy() if nu < tol else u / nu
    for _ in range(max_iter):
        T = np.zeros_like(u)
        for a, ui in zip(va, vu):
            dot = np.clip(np.dot(u.ravel(), ui.ravel()), -1, 1)
            theta = np.arccos(dot)
            if theta < tol:
                continue
            T += a * (theta / np.sin(theta)) * (ui - dot * u)
        nT = np.linalg.norm(T)
        if nT < tol:
            break
        u = np.cos(nT) * u + np.sin(nT) * (T / nT)
        un = np.linalg.norm(u)
        if un > tol:
            u = u / un
    return sum(a * n for a, n in zip(alphas, norms)) * u


def mk_model_stock(base, ws):
    w0 = base.ravel()
    offsets = [w.ravel() - w0 for w in ws]
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            np_ = np.linalg.norm(offsets[i]) * np.linalg.norm(offsets[j])
            cos.append(np.clip((offsets[i] * offsets[j]).sum() / max(np_, 1e-6), -1, 1))
    c = np.mean(cos)
    n = len(ws)
    t = n * c / (1 + (n - 1) * c)
    avg = sum(w.ravel() for w in ws) / n
    return (t * avg + (1 - t) * w0).reshape(base.shape)


def mk_rescaled(tensor, mask, rescale):
    masked = tensor * mask
    if not rescale:
        return masked
    before, after = np.abs(tensor).sum(), np.abs(masked).sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked * (before / after)


def mk_magnitude(t, density, rescale):
    if density >= 1:
        return t
    k = int(density * t.size)
    mask = np.zeros(t.size)
    mask[np.argsort(-np.abs(t.ravel()))[:k]] = 1
    return mk_rescaled(t, mask.reshape(t.shape), rescale)


def mk_magnitude_outliers(t, density, gamma, rescale):
    if density >= 1:
        return t
    n = t.size
    target, n_top = int(density * n), int(gamma * n)
    n_bot = n - target - n_top
    if n_bot < 0:
        n_top += n_bot
        n_bot = 0
    idx = np.argsort(np.abs(t.ravel()))
    mask = np.zeros(n)
    mask[idx[n_bot:-n_top]] = 1
    return mk_rescaled(t, mask.reshape(t.shape), rescale)


def draws(seed, path, i, shape):
    """The project's documented random stream (stands in for torch.bernoulli's)."""
    return np.random.default_rng([seed, zlib.crc32(path.encode()), i]).random(shape)


def mk_bernoulli(t, density, rescale, u):
    if density >= 1:
        return t
    return mk_rescaled(t, (u < density).astype(float), rescale)


def mk_della(t, density, epsilon, rescale, u):
    if density >= 1:
        return t
    shape = t.shape
    x = t[None] if t.ndim < 2 else t
    ranks = np.argsort(np.argsort(np.abs(x), axis=1), axis=1) + 1.0
    lo, hi = ranks.min(axis=1, keepdims=True), ranks.max(axis=1, keepdims=True)
    probs = (density - epsilon) + np.clip((ranks - lo) / (hi - lo), 0, 1) * 2 * epsilon
    mask = (u.reshape(x.shape) < probs).astype(float)
    return mk_rescaled(x, mask, rescale).reshape(shape)


GTA = {  # name: (sparsification, consensus, normalize, rescale), as mergekit's registry.py
    "task_arithmetic": (None, False, False, False),
    "ties": ("magnitude", True, True, False),
    "dare_ties": ("random", True, False, True),
    "dare_linear": ("random", False, False, True),
    "breadcrumbs": ("magnitude_outliers", False, False, False),
    "breadcrumbs_ties": ("magnitude_outliers", True, False, False),
    "della": ("della", True, True, True),
    "della_linear": ("della", False, False, True),
}


def mk_gta(name, path, xs, base, weights, density, lam=1.0, gamma=0.01, epsilon=0.15, seed=0):
    sparse, consensus, normalize, rescale = GTA[name]
    deltas = []
    for i, x in enumerate(xs):
        d = x - base
        dens = density[i] if isinstance(density, list) else density
        if sparse == "magnitude":
            d = mk_magnitude(d, dens, rescale)
        elif sparse == "magnitude_outliers":
            d = mk_magnitude_outliers(d, dens, gamma, rescale)
        elif sparse == "random":
            d = mk_bernoulli(d, dens, rescale, draws(seed, path, i, d.shape))
        elif sparse == "della":
            d = mk_della(d, dens, epsilon, rescale, draws(seed, path, i, d.shape))
        deltas.append(d)
    deltas = np.stack(deltas)
    w = np.asarray(weights, np.float64).reshape((-1,) + (1,) * base.ndim)
    wd = deltas * w
    if consensus:
        majority = np.where(wd.sum(0) >= 0, 1.0, -1.0)
        mask = (np.sign(wd) == majority).astype(float)
        mixed = (wd * mask).sum(0)
        div = (w * mask).sum(0)
        div[div == 0] = 1
    else:
        mixed = wd.sum(0)
        div = w.sum(0)
        div[np.abs(div) < 1e-8] = 1
    if normalize:
        mixed = mixed / div
    if lam != 1:
        mixed = mixed * lam
    return base + mixed


def mk_sce(xs, base, select_topk=1.0):
    tvs = np.stack([x - base for x in xs])
    if select_topk < 1:
        var = tvs.var(axis=0)
        k = int(np.count_nonzero(var) * select_topk)
        mask = np.zeros(var.size)
        mask[np.argsort(-np.abs(var.ravel()))[:k]] = 1
        tvs = tvs * mask.reshape(var.shape)[None]
    majority = np.where(tvs.sum(0) >= 0, 1.0, -1.0)
    erase = (np.sign(tvs) == majority).astype(float)
    tw = np.mean(tvs**2, axis=tuple(range(1, tvs.ndim)))
    tw = np.ones_like(tw) / len(tw) if abs(tw.sum()) < 1e-6 else tw / tw.sum()
    ew = tw.reshape((-1,) + (1,) * base.ndim) * erase
    return base + (tvs * ew).sum(0) / np.maximum(ew.sum(0), 1e-6)


# ---- tests ----


@pytest.mark.parametrize("normalize", [True, False])
def test_linear(normalize):
    out = MERGE_METHODS["linear"](TREES, weights=W, normalize=normalize)
    for p in SHAPES:
        _close(out[p], mk_linear([t[p] for t in TREES], W, normalize))


@pytest.mark.parametrize("use_base", [False, True])
def test_multislerp(use_base):
    base = BASE if use_base else None
    out = MERGE_METHODS["multislerp"](TREES, weights=W, base=base)
    for p in SHAPES:
        _close(out[p], mk_multislerp([t[p] for t in TREES], W, None if base is None else base[p]))


def test_multislerp_small_task_vectors_and_antipodal():
    # Task vectors of norm ~1e-3: mergekit's eps in x / (|x| + eps) shows at 1e-5 relative; transcribed.
    near = _near(BASE, 2, 3, spread=1.0)
    small = [{p: BASE[p] + 1e-3 * (t[p] - BASE[p]) for p in SHAPES} for t in near]
    out = MERGE_METHODS["multislerp"](small, weights=W, base=BASE)
    for p in SHAPES:
        _close(out[p] - BASE[p], mk_multislerp([t[p] for t in small], W, BASE[p]) - BASE[p])
    v = TREES[0]["w"]
    _close(methods.merge_leaf("multislerp", "w", [v, -v], weights=[1, 1]), mk_multislerp([v, -v], [1, 1]))
    _close(methods.merge_leaf("multislerp", "w", [v, -v], weights=[3, 1]), mk_multislerp([v, -v], [3, 1]))
    # K > 2 cancelling: mergekit raises; here the weighted average (documented).
    got = methods.merge_leaf("multislerp", "w", [v, -v, 2 * v, -2 * v])
    np.testing.assert_allclose(got, np.zeros_like(v), atol=1e-12)


def test_multislerp_log_variant_differs_with_a_base():
    out = MERGE_METHODS["multislerp"](NEAR, weights=W, base=BASE, tangent="log")
    ref = MERGE_METHODS["multislerp"](NEAR, weights=W, base=BASE)
    assert not np.allclose(out["w"], ref["w"], rtol=1e-6)


@pytest.mark.parametrize("t", [0.0, 0.35, 1.0])
def test_slerp(t):
    out = MERGE_METHODS["slerp"](TREES[:2], t=t)
    for p in SHAPES:
        _close(out[p], mk_slerp(t, TREES[0][p], TREES[1][p]))
    v = TREES[0]["b"]
    for pair in ([v, -v], [v, 1.0001 * v + 1e-6], [np.zeros_like(v), v]):  # antipodal, colinear, zero
        _close(methods.merge_leaf("slerp", "b", pair, t=t), mk_slerp(t, pair[0], pair[1]))
    # t defaults to the normalized second weight.
    _close(MERGE_METHODS["slerp"](TREES[:2], weights=[1, 3])["w"], mk_slerp(0.75, TREES[0]["w"], TREES[1]["w"]))


@pytest.mark.parametrize("use_base", [False, True])
def test_nuslerp(use_base):
    base = BASE if use_base else None
    out = MERGE_METHODS["nuslerp"](TREES[:2], weights=[0.4, 1.1], base=base)
    for p in SHAPES:
        _close(out[p], mk_nuslerp([0.4, 1.1], TREES[0][p], TREES[1][p], None if base is None else base[p]))
    v = TREES[0]["w"]
    _close(methods.merge_leaf("nuslerp", "w", [v, -v], weights=[1, 2]), mk_nuslerp([1, 2], v, -v))


def test_karcher():
    out = MERGE_METHODS["karcher"](TREES)
    for p in SHAPES:
        _close(out[p], mk_karcher([t[p] for t in TREES]))
    for params in ({"max_iter": 3, "tol": 1e-3}, {"max_iter": 50, "tol": 1e-12}):
        got = MERGE_METHODS["karcher"](TREES, **params)
        _close(got["w"], mk_karcher([t["w"] for t in TREES], **params))
    v = TREES[1]["b"]
    pair = [v, np.zeros_like(v), 2 * v]  # a zero input takes no part in the direction but in the norm
    _close(methods.merge_leaf("karcher", "b", pair), mk_karcher(pair))


def test_model_stock():
    out = MERGE_METHODS["model_stock"](NEAR, base=BASE)
    for p in SHAPES:
        _close(out[p], mk_model_stock(BASE[p], [t[p] for t in NEAR]))
    # Unrelated members (mean cosine near 0 or below, no clipping): still mergekit's t.
    out = MERGE_METHODS["model_stock"](TREES, base=BASE)
    _close(out["w"], mk_model_stock(BASE["w"], [t["w"] for t in TREES]))


@pytest.mark.parametrize("name", list(GTA))
def test_task_arithmetic_family(name):
    params = {"density": 0.6} if GTA[name][0] else {}
    if GTA[name][0] in ("random", "della"):
        params["seed"] = 5
    if GTA[name][0] == "magnitude_outliers":
        params["gamma"] = 0.15  # at least one outlier dropped in the 7-entry tensor too (see below)
    out = MERGE_METHODS[name](TREES, weights=W, base=BASE, lambda_=0.8, **params)
    for p in SHAPES:
        want = mk_gta(name, p, [t[p] for t in TREES], BASE[p], W, params.get("density", 1.0), lam=0.8,
                      gamma=params.get("gamma", 0.01), seed=5)
        _close(out[p], want)


def test_breadcrumbs_without_outliers_keeps_the_top():
    # int(gamma * n) = 0: mergekit's indices[n_bot:-0] is empty (the tensor is zeroed); here the top
    # int(density * n) entries are kept, which is TIES' magnitude trim.
    out = MERGE_METHODS["breadcrumbs"](TREES, weights=W, base=BASE, density=0.6)
    _close(out["b"], BASE["b"] + sum(w * mk_magnitude(t["b"] - BASE["b"], 0.6, False) for w, t in zip(W, TREES)))


@pytest.mark.parametrize("name", ["ties", "breadcrumbs", "della"])
def test_per_model_density_gamma_epsilon(name):
    dens = [0.5, 0.7, 0.4]
    extra = {"gamma": 0.05} if name == "breadcrumbs" else {"epsilon": 0.1} if name == "della" else {}
    out = MERGE_METHODS[name](TREES, weights=W, base=BASE, density=dens, **extra)
    want = mk_gta(name, "w", [t["w"] for t in TREES], BASE["w"], W, dens, **extra)
    _close(out["w"], want)


def test_normalize_and_rescale_overrides():
    out = MERGE_METHODS["dare_ties"](TREES, weights=W, base=BASE, density=1.0, normalize=True)
    _close(out["w"], mk_gta("ties", "w", [t["w"] for t in TREES], BASE["w"], W, 1.0))  # density 1: no drop
    a = MERGE_METHODS["ties"](TREES, weights=W, base=BASE, density=0.5, rescale=True)
    b = MERGE_METHODS["ties"](TREES, weights=W, base=BASE, density=0.5)
    assert not np.allclose(a["w"], b["w"])


def test_cancelling_task_vectors():
    d = {p: TREES[0][p] - BASE[p] for p in SHAPES}
    pair = [{p: BASE[p] + d[p] for p in SHAPES}, {p: BASE[p] - d[p] for p in SHAPES}]
    for name in GTA:
        params = {"density": 0.5} if GTA[name][0] else {}
        if GTA[name][0] == "magnitude_outliers":
            params["gamma"] = 0.15
        out = MERGE_METHODS[name](pair, weights=[1.0, 1.0], base=BASE, **params)
        for p in SHAPES:
            _close(out[p], mk_gta(name, p, [t[p] for t in pair], BASE[p], [1.0, 1.0], params.get("density", 1.0),
                                  gamma=params.get("gamma", 0.01)))
    out = MERGE_METHODS["sce"](pair, base=BASE)
    _close(out["w"], mk_sce([t["w"] for t in pair], BASE["w"]))


@pytest.mark.parametrize("topk", [1.0, 0.5])
def test_sce(topk):
    out = MERGE_METHODS["sce"](NEAR, base=BASE, select_topk=topk)
    for p in SHAPES:
        _close(out[p], mk_sce([t[p] for t in NEAR], BASE[p], topk))
    # Tiny task vectors (mean square total < 1e-6): mergekit's uniform weights.
    small = [{p: BASE[p] + 1e-4 * (t[p] - BASE[p]) for p in SHAPES} for t in NEAR]
    _close(MERGE_METHODS["sce"](small, base=BASE)["w"], mk_sce([t["w"] for t in small], BASE["w"]))


def test_negative_weights_only_for_task_negation():
    out = MERGE_METHODS["task_arithmetic"](TREES, weights=[1.0, -0.5, 0.25], base=BASE)
    _close(out["w"], mk_gta("task_arithmetic", "w", [t["w"] for t in TREES], BASE["w"], [1.0, -0.5, 0.25], 1.0))
    for name in ("ties", "multislerp", "linear", "model_stock", "dare_ties"):
        m = MERGE_METHODS[name]
        with pytest.raises(MergeError, match=r"weights must be >= 0"):
            m(TREES, weights=[1.0, -0.5, 0.25], base=BASE if m.needs_base else None)


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("task_arithmetic", {"lambda_": float("nan")}, "lambda_=nan must be a finite number"),
        ("task_arithmetic", {"lambda_": float("inf")}, "lambda_=inf must be a finite number"),
        ("ties", {"density": 0.0}, r"density=0.0 must be in \(0, 1\]"),
        ("ties", {"density": 1.5}, r"density=1.5 must be in \(0, 1\]"),
        ("ties", {"density": [0.5, 2.0, 0.5]}, r"density=2.0 must be in \(0, 1\]"),
        ("ties", {"density": [0.5, 0.5]}, "density: expected one value per model"),
        ("slerp", {"t": 1.2}, r"t=1.2 must be in \[0, 1\]"),
        ("slerp", {"t": {"default": -0.1}}, r"t=-0.1 must be in \[0, 1\]"),
        ("breadcrumbs", {"gamma": 1.0}, r"gamma=1.0 must be in \[0, 1\)"),
        ("della", {"density": 0.1, "epsilon": 0.15}, r"epsilon=0.15 must keep density \+/- epsilon in \(0, 1\)"),
        ("karcher", {"max_iter": 0}, "max_iter=0 must be an integer >= 1"),
        ("multislerp", {"tangent": "exp"}, "tangent='exp' must be one of"),
        ("sce", {"select_topk": 0}, r"select_topk=0 must be in \(0, 1\]"),
    ],
)
def test_parameter_ranges_are_refused_naming_the_parameter(name, params, message):
    m = MERGE_METHODS[name]
    trees = TREES[:2] if name == "slerp" else TREES
    with pytest.raises(MergeError, match=message):
        m(trees, base=BASE if m.needs_base else None, **params)


def test_weights_must_be_finite_and_sce_takes_none():
    with pytest.raises(MergeError, match="weights must be finite"):
        MERGE_METHODS["linear"](TREES, weights=[1.0, float("nan"), 1.0])
    with pytest.raises(MergeError, match="sce: takes no weights"):
        MERGE_METHODS["sce"](TREES, weights=W, base=BASE)


def test_non_finite_result_is_refused():
    huge = [{p: np.full(s, 1e308) for p, s in SHAPES.items()} for _ in range(2)]
    with pytest.raises(MergeError, match=r"merged parameter '(w|b)' has \d+ non-finite value"):
        MERGE_METHODS["task_arithmetic"](huge, weights=[1.0, 1.0], base={p: -v for p, v in huge[0].items()})
