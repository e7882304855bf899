"""Merges over model folders: streaming equals in memory, compatibility errors, bag inputs, the CLI."""

import gc
import os
import subprocess
import sys
import threading
import weakref

import ml_dtypes
import numpy as np
import pytest

from boom_jax import model_io
from boom_jax.merging import MERGE_METHODS, IncompatibleModelsError, check_compatible
from boom_jax.merging.methods import MergeError
from boom_jax.merging.streaming import leaf_groups, merge_models
from boom_jax.models.config import ModelConfig

TINY = ModelConfig(arch="bert", vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(seed, hidden=8):
    rng = np.random.default_rng(seed)
    return {
        "embeddings": {"word": rng.normal(size=(40, hidden)).astype(np.float32)},
        "layer_0": {"kernel": rng.normal(size=(hidden, 16)).astype(np.float32), "bias": rng.normal(size=(16,)).astype(np.float32)},
        "layer_1": {"kernel": rng.normal(size=(16, hidden)).astype(np.float32)},
        "norm": {"scale": rng.normal(size=(hidden,)).astype(ml_dtypes.bfloat16)},
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("models")
    paths = []
    for i in range(4):  # 3 members + a base
        paths.append(model_io.save_model_folder(root / f"m{i}", TINY, _params(i), minilm_path))
    return root, paths[:3], paths[3]


def _equal_trees(a, b):
    from boom_jax.merging.methods import flatten_with_paths

    fa, fb = dict(flatten_with_paths(a)[0]), dict(flatten_with_paths(b)[0])
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(np.asarray(fa[k], np.float32), np.asarray(fb[k], np.float32), err_msg=k)


@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("multislerp", {"weights": [0.2, 0.3, 0.5]}),
        ("multislerp", {"weights": [1.0, 2.0, 3.0], "use_base": True}),
        ("multislerp", {"tangent": "log"}),
        ("linear", {"weights": [1.0, 2.0, 3.0], "normalize": False}),
        ("ties", {"density": 0.5, "use_base": True}),
        ("dare_ties", {"density": 0.5, "seed": 3, "use_base": True}),
    ],
)
def test_streaming_equals_in_memory(folders, tmp_path, method, kwargs):
    _, members, base = folders
    kwargs = dict(kwargs)
    base_path = base if kwargs.pop("use_base", False) else None
    reference = MERGE_METHODS[method](
        [_params(i) for i in range(3)], base=None if base_path is None else _params(3), **kwargs
    )
    for group_mb, name in ((None, "largest"), (1e-4, "tiny_groups")):
        out = merge_models(
            members, tmp_path / name, method, base=base_path, streaming=True, progress=False,
            group_bytes=None if group_mb is None else int(group_mb * 2**20), **kwargs,
        )
        cfg, merged, tok = model_io.load_model(out)
        assert cfg == TINY and tok is not None
        _equal_trees(merged, reference)
    in_memory = merge_models(members, tmp_path / "mem", method, base=base_path, streaming=False, progress=False, **kwargs)
    _equal_trees(model_io.load_model(in_memory)[1], reference)


def test_leaf_groups_respect_budget():
    specs = {"a": ((10,), np.dtype(np.float32)), "b": ((5,), np.dtype(np.float32)), "c": ((100,), np.dtype(np.float32)), "d": ((1,), np.dtype(np.float32))}
    assert leaf_groups(specs, 60) == [["a", "b"], ["c"], ["d"]]
    assert leaf_groups(specs, 10**6) == [["a", "b", "c", "d"]]


def test_incompatible_models_fail_listing_mismatches_and_write_nothing(folders, tmp_path, minilm_path):
    root, members, _ = folders
    wide = model_io.save_model_folder(tmp_path / "wide", TINY.replace(hidden_size=10), _params(5, hidden=10), minilm_path)
    missing = _params(6)
    del missing["layer_1"]
    short = model_io.save_model_folder(tmp_path / "short", TINY, missing, minilm_path)
    qwen = model_io.save_model_folder(tmp_path / "qwen", TINY.replace(arch="qwen3"), _params(7), minilm_path)
    for other, patterns in (
        (wide, [r"'embeddings/word' has shape \(40, 10\)", r"config hidden_size = 10"]),
        (short, [r"missing parameter 'layer_1/kernel'"]),
        (qwen, [r"config arch = 'qwen3'"]),
    ):
        out = tmp_path / "out"
        for streaming in (True, False):
            with pytest.raises(IncompatibleModelsError) as err:
                merge_models([members[0], other], out, "linear", streaming=streaming, progress=False)
            for pattern in patterns:
                assert err.match(pattern)
            assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["qwen", "short", "wide"]  # no temp folders left


def test_mismatch_list_is_truncated():
    a = {f"p{i}": np.zeros(2, np.float32) for i in range(15)}
    b = {f"p{i}": np.zeros(3, np.float32) for i in range(15)}
    with pytest.raises(IncompatibleModelsError, match=r"and 5 more") as err:
        check_compatible([a, b])
    assert len(err.value.mismatches) == 15
    # Training-only config fields are ignored.
    check_compatible([a, a], configs=[TINY, TINY.replace(dropout=0.1, remat=True, dtype="bfloat16")])


def test_bag_workdir_inputs(folders, tmp_path, minilm_path):
    bag = tmp_path / "bag"
    for i in range(2):
        model_io.save_model_folder(bag / "members" / f"member_{i}" / "model", TINY, _params(i), minilm_path)
    out = merge_models([bag], tmp_path / "merged", "linear", progress=False)
    _equal_trees(model_io.load_model(out)[1], MERGE_METHODS["linear"]([_params(0), _params(1)]))


@pytest.fixture(scope="module")
def tiny_bert_folders(tmp_path_factory, minilm_path):
    """Two tiny BERT model folders (random weights through the HF name map) that export can write."""
    from boom_jax.hf.bert_weights import expected_shapes, hf_to_flax

    root = tmp_path_factory.mktemp("bert")
    cfg = ModelConfig(arch="bert", vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, normalize=True)
    trees = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        tensors = {n: (0.02 * rng.normal(size=s)).astype(np.float32) for n, s in expected_shapes(cfg).items()}
        trees.append(hf_to_flax(tensors, cfg))
    a = model_io.save_model_folder(root / "a", cfg, trees[0], minilm_path)
    b = model_io.save_model_folder(root / "b", cfg, trees[1], minilm_path)
    return a, b, trees[0], trees[1]


def test_cli_merges_and_exports(tiny_bert_folders, tmp_path, capsys):
    from absl import flags

    from boom_jax import merge as cli

    a, b, params, other = tiny_bert_folders
    out = tmp_path / "merged"
    # `python -m boom_jax.merge --help` lists the methods with their parameters.
    run = subprocess.run([sys.executable, "-m", "boom_jax.merge", "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO)
    assert "multislerp: spherical weighted mean" in run.stdout and "dare_ties: seeded random drop" in run.stdout
    # The same main, in process (the suite already imported what it needs).
    argv = flags.FLAGS(["merge", "--method=multislerp", f"--out={out}", "--weights=1,3", "--streaming", a, b])
    cli.main(argv)
    cfg, merged, _ = model_io.load_model(out)
    _equal_trees(merged, MERGE_METHODS["multislerp"]([params, other], weights=[0.25, 0.75]))
    # The export is a HF / sentence-transformers folder holding the same weights.
    assert os.path.isfile(out / "export" / "modules.json")
    exported_cfg, exported, _ = model_io.load_model(out / "export")
    assert exported_cfg.normalize and exported_cfg.hidden_size == 16
    np.testing.assert_array_equal(
        exported["embeddings"]["word_embeddings"]["embedding"], merged["embeddings"]["word_embeddings"]["embedding"]
    )
    # An HF / sentence-transformers folder is an input too (loaded whole, merged with a model folder).
    mixed = merge_models([out / "export", a], tmp_path / "mixed", "linear", progress=False)
    _equal_trees(model_io.load_model(mixed)[1], MERGE_METHODS["linear"]([merged, params]))
    # A non-empty --out is refused without --overwrite, and left untouched (same main, in process).
    before = sorted(os.listdir(out))
    flags.FLAGS.unparse_flags()
    argv = flags.FLAGS(["merge", "--method=linear", f"--out={out}", a, b])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == before
    flags.FLAGS.unparse_flags()


def test_first_failing_leaf_is_reported_and_nothing_written(tmp_path, minilm_path):
    # Two leaves overflow float32 when summed; the leaves merge on several threads, yet the error names
    # the first in checkpoint order, as a merge leaf by leaf would.
    trees = []
    for i in range(2):
        p = _params(i)
        p["layer_0"]["kernel"][:] = 3e38
        p["layer_1"]["kernel"][:] = 3e38
        trees.append(model_io.save_model_folder(tmp_path / f"m{i}", TINY, p, minilm_path))
    for group_bytes in (None, 10**6, 1):  # one group per leaf budget, everything in one group, one leaf each
        out = tmp_path / f"out_{group_bytes}"
        with pytest.raises(MergeError, match=r"'layer_0/kernel' has \d+ non-finite"):
            merge_models(trees, out, "linear", weights=[1.0, 1.0], normalize=False, group_bytes=group_bytes,
                         progress=False)
        assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["m0", "m1"]  # no temp folders left


def _count_held_inputs(monkeypatch):
    """[bytes of read leaves still alive], [their peak]: every array a ModelSource read returns is
    counted until it is garbage (weakref.finalize), so whatever the merge keeps is counted; a read
    array the merged leaf was written over (LeafMerge's reuse_last) counts as output from then on."""
    from boom_jax.merging import methods, streaming

    held, peak, lock = [0], [0], threading.Lock()
    as_input: dict[int, int] = {}  # data address -> bytes, for read arrays still counted as inputs
    read, finish = streaming.ModelSource.read, methods.LeafMerge.finish

    def release(address):
        with lock:
            held[0] -= as_input.pop(address, 0)

    def counting_read(self, paths):
        out = read(self, paths)
        with lock:
            for a in out.values():
                as_input[a.__array_interface__["data"][0]] = a.nbytes
                held[0] += a.nbytes
            peak[0] = max(peak[0], held[0])
        for a in out.values():
            weakref.finalize(a, release, a.__array_interface__["data"][0])
        return out

    def finish_as_output(self, *args, **kwargs):
        merged = finish(self, *args, **kwargs)
        with lock:
            held[0] -= as_input.pop(merged.__array_interface__["data"][0], 0)
        return merged

    monkeypatch.setattr(streaming.ModelSource, "read", counting_read)
    monkeypatch.setattr(methods.LeafMerge, "finish", finish_as_output)
    return held, peak


def test_inputs_in_memory_stay_within_budget(folders, tmp_path, monkeypatch):
    # Methods that need all K leaves (ties) hold the K members' and the base's groups, plus the next
    # two being read ahead: at most (K + 3) x group_bytes of inputs (here K = 3 and a base).
    _, members, base = folders
    specs = model_io.read_param_specs(members[0])
    budget = max(int(np.prod(s)) * np.dtype(d).itemsize for s, d in specs.values())
    held, peak = _count_held_inputs(monkeypatch)
    reference = MERGE_METHODS["ties"]([_params(i) for i in range(3)], base=_params(3), density=0.5)
    out = merge_models(members, tmp_path / "out", "ties", base=base, density=0.5, group_bytes=budget, progress=False)
    _equal_trees(model_io.load_model(out)[1], reference)
    gc.collect()
    assert held[0] == 0
    assert 3 * budget < peak[0] <= 6 * budget, (peak[0], budget)


@pytest.mark.parametrize("method", ["multislerp", "linear"])
def test_reduced_merges_hold_three_groups_whatever_k(folders, tmp_path, monkeypatch, method):
    # linear and multislerp fold each member into a float64 sum: the inputs alive at any time are the
    # group being merged and the two read ahead, for K = 2 as for K = 3 (a read the merged leaf was
    # written over is output, not input, from then on).
    _, members, _ = folders
    specs = model_io.read_param_specs(members[0])
    budget = max(int(np.prod(s)) * np.dtype(d).itemsize for s, d in specs.values())
    held, peak = _count_held_inputs(monkeypatch)
    for k in (2, 3):
        peak[0] = 0
        out = merge_models(members[:k], tmp_path / f"out_{k}", method, group_bytes=budget, progress=False)
        _equal_trees(model_io.load_model(out)[1], MERGE_METHODS[method]([_params(i) for i in range(k)]))
        gc.collect()
        assert held[0] == 0
        assert budget <= peak[0] <= 3 * budget, (k, peak[0], budget)


def test_multislerp_reads_again_where_the_mean_direction_vanishes(tmp_path, minilm_path):
    # Antipodal members with equal weights: the one-member-at-a-time sum cannot answer, so the
    # streaming merge reads that leaf of every member again and takes the Gram formula's weighted
    # average, as the in-memory merge does.
    p = _params(0)
    neg = {g: {k: -v for k, v in leaves.items()} for g, leaves in p.items()}
    folders = [model_io.save_model_folder(tmp_path / n, TINY, t, minilm_path) for n, t in (("pos", p), ("neg", neg))]
    reference = MERGE_METHODS["multislerp"]([p, neg])
    assert all(not np.any(np.asarray(v, np.float32)) for g in reference.values() for v in g.values())
    out = merge_models(folders, tmp_path / "out", "multislerp", progress=False)
    _equal_trees(model_io.load_model(out)[1], reference)
