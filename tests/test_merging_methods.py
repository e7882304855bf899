"""Merge methods against plain NumPy float64 references and their invariants."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from boom_jax.merging import methods
from boom_jax.merging.methods import MERGE_METHODS, MergeError

RNG = np.random.default_rng(0)


def _tree(rng, scale=1.0):
    return {
        "encoder": {
            "layer_0": {"kernel": (scale * rng.normal(size=(6, 5))).astype(np.float32), "bias": rng.normal(size=(5,)).astype(np.float32)},
            "layer_1": {"kernel": rng.normal(size=(4, 3)).astype(np.float32)},
        },
        "embed": rng.normal(size=(9,)).astype(ml_dtypes.bfloat16),
    }


TREES = [_tree(RNG) for _ in range(3)]
BASE = _tree(RNG)
PATHS = ["embed", "encoder/layer_0/bias", "encoder/layer_0/kernel", "encoder/layer_1/kernel"]


def _leaf(tree, path):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _f64(tree, path):
    return np.asarray(_leaf(tree, path), np.float64)


# ---- independent float64 references (direct vector formulas, no Gram matrices) ----


def ref_multislerp(vectors, weights, base=None, log=True):
    w = np.asarray(weights, np.float64) / np.sum(weights)
    x = np.stack([np.asarray(v, np.float64).ravel() for v in vectors])
    b = None if base is None else np.asarray(base, np.float64).ravel()
    if b is not None:
        x = x - b
    norms = np.linalg.norm(x, axis=1)
    u = x / norms[:, None]
    mean = (w[:, None] * u).sum(0)
    if np.linalg.norm(mean) < 1e-8:
        out = (w[:, None] * x).sum(0)
    else:
        mu = mean / np.linalg.norm(mean)
        tangent = np.zeros_like(mu)
        for wi, ui in zip(w, u):
            c = np.clip(ui @ mu, -1, 1)
            v = ui - c * mu
            s = np.linalg.norm(v)
            if s > 1e-12:
                tangent += wi * (np.arctan2(s, c) / s if log else 1.0) * v
            elif c > 0 or not log:
                tangent += wi * v
        size = np.linalg.norm(tangent)
        direction = np.cos(size) * mu + (np.sin(size) / size if size > 0 else 1.0) * tangent
        out = (w @ norms) * direction
    if b is not None:
        out = out + b
    return out.reshape(np.shape(vectors[0]))


def ref_karcher(vectors, weights, iters=200):
    w = np.asarray(weights, np.float64) / np.sum(weights)
    x = np.stack([np.asarray(v, np.float64).ravel() for v in vectors])
    norms = np.linalg.norm(x, axis=1)
    u = x / norms[:, None]
    mu = (w[:, None] * u).sum(0)
    mu /= np.linalg.norm(mu)
    for _ in range(iters):
        theta = np.arccos(np.clip(u @ mu, -1, 1))
        logs = [(t / np.sin(t)) * (ui - np.cos(t) * mu) if t > 1e-12 else 0 * mu for t, ui in zip(theta, u)]
        step = sum(wi * li for wi, li in zip(w, logs))
        n = np.linalg.norm(step)
        if n < 1e-14:
            break
        mu = np.cos(n) * mu + np.sin(n) / n * step
        mu /= np.linalg.norm(mu)
    return ((w @ norms) * mu).reshape(np.shape(vectors[0]))


def ref_slerp(a, b, t):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    theta = np.arccos(np.clip((a.ravel() @ b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))
    return (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)


def ref_ties(xs, base, weights, density, lam=1.0):
    d = np.stack([np.asarray(x, np.float64).ravel() - np.asarray(base, np.float64).ravel() for x in xs])
    keep = int(density * d.shape[1])
    trimmed = np.zeros_like(d)
    for i in range(len(d)):
        order = np.argsort(-np.abs(d[i]))[:keep]
        trimmed[i, order] = d[i, order]
    w = np.asarray(weights, np.float64)
    w = w / w.sum()
    sign = np.sign((w[:, None] * trimmed).sum(0))
    out = np.zeros(d.shape[1])
    for j in range(d.shape[1]):
        num = den = 0.0
        for i in range(len(d)):
            if trimmed[i, j] != 0 and np.sign(trimmed[i, j]) == sign[j]:
                num += w[i] * trimmed[i, j]
                den += w[i]
        out[j] = num / den if den else 0.0
    return (np.asarray(base, np.float64).ravel() + lam * out).reshape(np.shape(base))


def ref_model_stock(xs, base, weights=None):
    k = len(xs)
    d = [np.asarray(x, np.float64).ravel() - np.asarray(base, np.float64).ravel() for x in xs]
    cos = np.mean([d[i] @ d[j] / np.linalg.norm(d[i]) / np.linalg.norm(d[j]) for i in range(k) for j in range(i + 1, k)])
    cos = np.clip(cos, 0, 1)
    t = k * cos / (1 + (k - 1) * cos)
    w = np.full(k, 1 / k) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    avg = sum(wi * np.asarray(x, np.float64) for wi, x in zip(w, xs))
    return t * avg + (1 - t) * np.asarray(base, np.float64)


def _assert_close(got, want, rtol):
    got64 = np.asarray(got, np.float64)
    np.testing.assert_allclose(got64, want, rtol=rtol, atol=rtol * np.abs(want).max())


def _tol(path):
    return 1e-2 if path == "embed" else 1e-6  # bf16 vs f32 output rounding


# ---- each method against its reference, on every leaf (f32 and bf16) ----


def test_linear_matches_weighted_average():
    out = MERGE_METHODS["linear"](TREES, weights=[1.0, 2.0, 5.0])
    for p in PATHS:
        want = sum(w * _f64(t, p) for w, t in zip([1 / 8, 2 / 8, 5 / 8], TREES))
        _assert_close(_leaf(out, p), want, _tol(p))
        assert _leaf(out, p).dtype == _leaf(TREES[0], p).dtype


@pytest.mark.parametrize("use_base", [False, True])
def test_multislerp_log_variant_matches_reference(use_base):
    w = [0.2, 0.3, 0.5]
    out = MERGE_METHODS["multislerp"](TREES, weights=w, base=BASE if use_base else None, tangent="log")
    for p in PATHS:
        want = ref_multislerp([_leaf(t, p) for t in TREES], w, _leaf(BASE, p) if use_base else None)
        _assert_close(_leaf(out, p), want, _tol(p))


def test_multislerp_projection_variant_is_mergekit_formula():
    out = MERGE_METHODS["multislerp"](TREES, weights=[1, 1, 2], tangent="projection")
    for p in PATHS[1:]:
        _assert_close(_leaf(out, p), ref_multislerp([_leaf(t, p) for t in TREES], [1, 1, 2], log=False), 1e-6)


def test_multislerp_float64_reference_on_hard_geometry():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(4096,))
    cases = {
        "random": [rng.normal(size=4096) for _ in range(4)],
        "nearly_parallel": [v + 1e-6 * rng.normal(size=4096) for _ in range(3)],
        "nearly_opposite": [v, -v + 1e-4 * rng.normal(size=4096)],
        "opposite_plus_third": [v, -v, rng.normal(size=4096)],
        "antipodal_to_mean": [v, 2 * v, -v],  # the last one sits exactly at -mean: no tangent direction
    }
    for name, vecs in cases.items():
        w = rng.uniform(0.5, 1.5, size=len(vecs))
        got = methods.merge_leaf("multislerp", name, vecs, weights=w, tangent="log")
        assert np.all(np.isfinite(got)), name
        want = ref_multislerp(vecs, w)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(), err_msg=name)


def test_multislerp_exactly_opposite_equal_weights_falls_back_to_linear():
    v = RNG.normal(size=(64,))
    got = methods.merge_leaf("multislerp", "x", [v, -v, 2 * v, -2 * v], tangent="log")
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np.zeros(64), atol=1e-12)
    # Opposite with unequal weights: well defined, on the heavier side, weighted-mean norm.
    got = methods.merge_leaf("multislerp", "x", [v, -v], weights=[0.75, 0.25], tangent="log")
    np.testing.assert_allclose(got, v, rtol=1e-12)


def test_karcher_matches_reference_and_is_a_fixed_point():
    w = [0.5, 0.2, 0.3]
    out = MERGE_METHODS["karcher"](TREES, weights=w, tol=1e-14, max_iter=200)
    for p in PATHS[1:]:
        _assert_close(_leaf(out, p), ref_karcher([_leaf(t, p) for t in TREES], w), 1e-6)


def test_slerp_matches_reference_and_endpoints():
    for t in (0.0, 0.3, 1.0):
        out = MERGE_METHODS["slerp"](TREES[:2], t=t)
        for p in PATHS:
            _assert_close(_leaf(out, p), ref_slerp(_leaf(TREES[0], p), _leaf(TREES[1], p), t), _tol(p))
    with pytest.raises(MergeError, match="exactly 2 models"):
        MERGE_METHODS["slerp"](TREES)


def test_task_arithmetic_matches_formula():
    out = MERGE_METHODS["task_arithmetic"](TREES, weights=[0.5, 1.0, -0.25], base=BASE, lambda_=0.7)
    for p in PATHS:
        want = _f64(BASE, p) + 0.7 * sum(w * (_f64(t, p) - _f64(BASE, p)) for w, t in zip([0.5, 1.0, -0.25], TREES))
        _assert_close(_leaf(out, p), want, _tol(p))


@pytest.mark.parametrize("density", [1.0, 0.4])
def test_ties_matches_reference(density):
    w = [1.0, 2.0, 1.0]
    out = MERGE_METHODS["ties"](TREES, weights=w, base=BASE, density=density, lambda_=0.9)
    for p in PATHS[1:]:
        want = ref_ties([_leaf(t, p) for t in TREES], _leaf(BASE, p), w, density, 0.9)
        _assert_close(_leaf(out, p), want, 1e-6)


def test_dare_matches_reference_masks_and_is_seeded():
    w = [0.3, 0.3, 0.4]
    a = MERGE_METHODS["dare_linear"](TREES, weights=w, base=BASE, density=0.5, seed=7)
    b = MERGE_METHODS["dare_linear"](TREES, weights=w, base=BASE, density=0.5, seed=7)
    c = MERGE_METHODS["dare_linear"](TREES, weights=w, base=BASE, density=0.5, seed=8)
    p = "encoder/layer_0/kernel"
    np.testing.assert_array_equal(_leaf(a, p), _leaf(b, p))
    assert not np.array_equal(_leaf(a, p), _leaf(c, p))
    d1 = MERGE_METHODS["dare_ties"](TREES, weights=w, base=BASE, density=0.5, seed=7)
    d2 = MERGE_METHODS["dare_ties"](TREES, weights=w, base=BASE, density=0.5, seed=7)
    np.testing.assert_array_equal(_leaf(d1, p), _leaf(d2, p))


def test_model_stock_matches_reference():
    # Members near each other around the base, so the mean cosine is positive.
    shared = {p: RNG.normal(size=np.shape(_leaf(BASE, p))) for p in PATHS}
    members = []
    for i in range(3):
        m = _tree(np.random.default_rng(10 + i))
        for p in PATHS:
            parent, key = p.rsplit("/", 1) if "/" in p else ("", p)
            holder = _leaf(m, parent) if parent else m
            holder[key] = (_f64(BASE, p) + shared[p] + 0.5 * RNG.normal(size=shared[p].shape)).astype(_leaf(BASE, p).dtype)
        members.append(m)
    out = MERGE_METHODS["model_stock"](members, base=BASE)
    for p in PATHS:
        want = ref_model_stock([_leaf(m, p) for m in members], _leaf(BASE, p))
        _assert_close(_leaf(out, p), want, _tol(p))


# ---- invariants ----

ALL = list(MERGE_METHODS)


@pytest.mark.parametrize("name", ALL)
def test_identical_inputs_return_that_model(name):
    m = MERGE_METHODS[name]
    k = 2 if name in ("slerp", "nuslerp") else 3
    params = {"density": 1.0} if name.startswith("dare") else {}
    out = m([TREES[0]] * k, base=BASE if m.needs_base else None, **params)
    for p in PATHS:
        np.testing.assert_array_equal(np.asarray(_leaf(out, p), np.float32), np.asarray(_leaf(TREES[0], p), np.float32))
        assert _leaf(out, p).dtype == _leaf(TREES[0], p).dtype


@pytest.mark.parametrize("name", ["linear", "multislerp", "karcher"])
def test_one_hot_weights_return_that_member(name):
    out = MERGE_METHODS[name](TREES, weights=[0.0, 1.0, 0.0])
    for p in PATHS:
        np.testing.assert_array_equal(np.asarray(_leaf(out, p), np.float32), np.asarray(_leaf(TREES[1], p), np.float32))


@pytest.mark.parametrize("name", ["linear", "multislerp", "karcher", "ties", "model_stock"])
def test_weights_are_normalized(name):
    m = MERGE_METHODS[name]
    base = BASE if m.needs_base else None
    a = m(TREES, weights=[1.0, 2.0, 3.0], base=base)
    b = m(TREES, weights=[10.0, 20.0, 30.0], base=base)
    for p in PATHS:
        np.testing.assert_allclose(np.asarray(_leaf(a, p), np.float32), np.asarray(_leaf(b, p), np.float32), rtol=1e-6)


@pytest.mark.parametrize("name", ["ties", "dare_ties", "dare_linear"])
def test_zero_density_is_refused(name):
    with pytest.raises(MergeError, match=r"density=0.0 must be in \(0, 1\]"):
        MERGE_METHODS[name](TREES, base=BASE, density=0.0)


def test_per_pattern_weights_and_filters():
    weights = {"encoder/layer_0/.*": [1.0, 0.0, 0.0], "default": [0.0, 0.0, 1.0]}
    out = MERGE_METHODS["linear"](TREES, weights=weights, exclude="embed")
    np.testing.assert_array_equal(out["encoder"]["layer_0"]["kernel"], TREES[0]["encoder"]["layer_0"]["kernel"])
    np.testing.assert_array_equal(out["encoder"]["layer_1"]["kernel"], TREES[2]["encoder"]["layer_1"]["kernel"])
    np.testing.assert_array_equal(out["embed"], TREES[0]["embed"])  # excluded: copied from the first tree
    out = MERGE_METHODS["linear"](TREES, base=BASE, include=r"encoder/.*/kernel")
    np.testing.assert_array_equal(out["encoder"]["layer_0"]["bias"], BASE["encoder"]["layer_0"]["bias"])
    # Per-pattern method parameters too.
    out = MERGE_METHODS["slerp"](TREES[:2], t={"encoder/.*": 0.0, "default": 1.0})
    np.testing.assert_array_equal(out["encoder"]["layer_1"]["kernel"], TREES[0]["encoder"]["layer_1"]["kernel"])
    np.testing.assert_array_equal(out["embed"], TREES[1]["embed"])


def test_jax_inputs_give_jax_outputs_of_same_dtype():
    jtrees = [{"w": jnp.asarray(t["encoder"]["layer_1"]["kernel"]), "e": jnp.asarray(t["embed"])} for t in TREES]
    out = MERGE_METHODS["multislerp"](jtrees, tangent="log")
    assert isinstance(out["w"], type(jtrees[0]["w"])) and out["e"].dtype == jnp.bfloat16
    want = ref_multislerp([np.asarray(t["w"]) for t in jtrees], [1, 1, 1])
    _assert_close(out["w"], want, 1e-6)


def test_bad_input_errors():
    with pytest.raises(MergeError, match="expected 3 values"):
        MERGE_METHODS["linear"](TREES, weights=[1.0, 2.0])
    with pytest.raises(MergeError, match="needs a base"):
        MERGE_METHODS["ties"](TREES)
    with pytest.raises(MergeError, match="unknown parameter"):
        MERGE_METHODS["linear"](TREES, density=0.5)
    with pytest.raises(MergeError, match="sum to 0"):
        MERGE_METHODS["linear"](TREES, weights=[0.0, 0.0, 0.0])
    with pytest.raises(MergeError, match="no pattern matches"):
        MERGE_METHODS["linear"](TREES, weights={"embed": [1, 1, 1]})
    with pytest.raises(MergeError, match="unknown merge method 'soup'"):
        methods.get_method("soup")


def test_blas_thread_count_changes_no_bits_and_is_restored():
    # merge_leaf runs its BLAS products on methods.BLAS_THREADS threads; that choice must be one of
    # speed only: the chunked Gram and combination are the same bits with 1 or 2 BLAS threads, and the
    # caller's thread count is back after the merge.
    from threadpoolctl import ThreadpoolController

    ctl = ThreadpoolController()
    rng = np.random.default_rng(3)
    n = 3 * methods.CHUNK_ELEMENTS + 7
    xs = [rng.standard_normal(n).astype(np.float32) for _ in range(5)]
    coeffs = rng.standard_normal(5)
    results = []
    for threads in (1, 2):
        with ctl.limit(limits=threads, user_api="blas"):
            results.append((methods.gram_matrix(xs), methods.combine(xs, coeffs), methods.merge_leaf("multislerp", "w", xs)))
            assert {lib["num_threads"] for lib in ctl.select(user_api="blas").info()} == {threads}
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("use_base", [False, True])
def test_member_by_member_sums_equal_the_gram_formulas(use_base):
    # linear and multislerp fold one member at a time into a float64 sum (LeafMerge with a reducer);
    # they give the Gram-matrix formulas' results to rounding, over several chunks, with a base and
    # unnormalized weights, and keep no member alive.
    import gc
    import weakref

    rng = np.random.default_rng(5)
    n = 2 * methods.CHUNK_ELEMENTS + 11
    xs = [rng.standard_normal(n).astype(np.float32) + 0.3 * i for i in range(4)]
    base = rng.standard_normal(n).astype(np.float32) if use_base else None
    w = np.array([1.0, 2.0, 3.0, 0.5])
    for name, gram_formula, params in (
        ("multislerp", methods._multislerp_leaf, {}),
        ("linear", methods._linear_leaf, {"normalize": False}),
    ):
        merge = methods.LeafMerge(name, "w", 4, base, weights=list(w), **params)
        alive = []
        for x in xs:
            y = x.copy()
            alive.append(weakref.ref(y))
            merge.add(y)
            del y
        gc.collect()
        assert merge.mode == "reduce" and not any(r() is not None for r in alive)
        got = merge.finish()
        want = gram_formula(xs, w, base, **params)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
        np.testing.assert_array_equal(got, methods.merge_leaf(name, "w", xs, base, weights=list(w), **params))


def test_leaf_merge_wants_every_member():
    merge = methods.LeafMerge("multislerp", "w", 3)
    merge.add(np.ones(4, np.float32))
    with pytest.raises(MergeError, match="1 of 3 models"):
        merge.finish()


@pytest.mark.parametrize("name", ["multislerp", "linear"])
def test_sums_use_given_memory_and_leave_caller_arrays_alone(name):
    # The streaming merge hands LeafMerge one float64 block for its sums (scratch) and lets it write
    # the result over the last member's leaf (reuse_last, its own read): same result, no new arrays.
    # By default the caller's leaves are left as they were.
    rng = np.random.default_rng(11)
    n = methods.CHUNK_ELEMENTS + 5
    xs = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    originals = [x.copy() for x in xs]
    plain = methods.merge_leaf(name, "w", xs, weights=[1.0, 2.0, 3.0])
    for x, original in zip(xs, originals):
        np.testing.assert_array_equal(x, original)
    scratch = np.zeros(n + 7)
    merge = methods.LeafMerge(name, "w", 3, weights=[1.0, 2.0, 3.0], scratch=scratch, reuse_last=True)
    owned = [x.copy() for x in xs]
    for x in owned:
        merge.add(x)
    got = merge.finish()
    np.testing.assert_array_equal(got, plain)
    assert np.shares_memory(got, owned[-1])  # written over the last member's leaf
    assert np.any(scratch[:n] != 0) and not np.any(scratch[n:])  # summed in the given block
