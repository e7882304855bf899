"""Hard-negative mining and teacher scoring: exact chunked top-k against a NumPy brute force; mined
negatives on built-in data never positives, inside the rank range, filtered as asked, and equal to a
brute-force transcription; the mine / score commands write JSONL that loads back with its scores."""

import json

import numpy as np
import pytest
from absl import flags

from boom_jax import mine, score
from boom_jax.data.builtin import builtin_train_datasets
from boom_jax.data.sources import load_datasets
from boom_jax.encode import load_encoder
from boom_jax.models.encoder import data_mesh
from boom_jax.mining import (
    MiningOptions,
    MiningStats,
    corpus_of,
    mine_hard_negatives,
    parse_range,
    search_memory_bytes,
    teacher_scores,
    top_k_search,
)
from tests.helpers_tiny_models import make_tiny_bert_folder

BATCH = 16
MAX_LEN = 32


def _brute_force_ranking(q, c):
    """Full ranking per query in float64: score descending, corpus index ascending."""
    s = np.asarray(q, np.float64) @ np.asarray(c, np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(c.shape[0]), s.shape), -s), axis=1)
    return order, np.take_along_axis(s, order, axis=1)


def test_chunked_top_k_equals_brute_force():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(37, 16)).astype(np.float32)
    c = rng.normal(size=(301, 16)).astype(np.float32)
    c[50] = c[7]  # an exact tie: the lower index ranks first
    scores, indices = top_k_search(q, c, 40, query_chunk=8, corpus_chunk=64)
    order, want = _brute_force_ranking(q, c)
    np.testing.assert_array_equal(indices, order[:, :40])
    np.testing.assert_allclose(scores, want[:, :40], rtol=1e-5, atol=1e-5)
    assert top_k_search(q, c[:5], 40)[1].shape == (37, 5)  # k capped by the corpus size
    assert search_memory_bytes(37, 301, 16, 40, 8, 64) == 4 * 16 * 338 + 8 * 104 * 29 + 37 * 40 * 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # a wide init spreads the random model's embeddings (the default one maps every text near one point)
    folder = make_tiny_bert_folder(tmp_path_factory.mktemp("tiny_bert"), initializer_range=1.0)
    encoder = load_encoder(folder, max_seq_length=MAX_LEN)  # few length buckets: few compiles
    (dataset,) = builtin_train_datasets(["debian_desc"], limit=32)
    examples = dataset.examples
    texts = corpus_of(examples)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    c = unit(encoder.encode(texts, batch_size=BATCH))
    q = unit(encoder.encode([e.prompt + e.query for e in examples], batch_size=BATCH))
    return folder, encoder, examples, (texts, c, q)


def _reference(embedded, examples, options, low, high):
    """Loop transcription: rank every corpus text, keep ranks [low, high) that are not a positive or the
    query, apply sentence-transformers' filters (the allowed candidates, best first)."""
    texts, c, q = embedded
    order, ranked = _brute_force_ranking(q, c)
    out = []
    for row, e in enumerate(examples):
        min_pos = min(float(c[texts.index(p)] @ q[row]) for p in e.pos)
        allowed = []
        for rank in range(low, high):
            text, s = texts[order[row, rank]], ranked[row, rank]
            if text in e.pos or text == e.query:
                continue
            if options.absolute_margin is not None and s + options.absolute_margin > min_pos:
                continue
            if options.relative_margin is not None and s > min_pos - abs(min_pos) * options.relative_margin:
                continue
            if options.max_score is not None and s > options.max_score:
                continue
            allowed.append(text)
        out.append(allowed)
    return out


@pytest.mark.parametrize("options", [
    MiningOptions(num_negatives=4, range_min=3, range_max=20, sampling_strategy="top"),
    MiningOptions(num_negatives=4, range_min=2, range_max=30, relative_margin=0.05, max_score=0.99),
    MiningOptions(num_negatives=5, range_min=1, range_max=25, absolute_margin=0.0, sampling_strategy="random"),
])
def test_mined_negatives_match_brute_force(setup, options):
    _, encoder, examples, embedded = setup
    stats = MiningStats()
    mined = mine_hard_negatives(encoder, examples, options, batch_size=BATCH, query_chunk=7, corpus_chunk=19,
                                progress=False, stats=stats)
    allowed = _reference(embedded, examples, options, options.range_min, options.range_max)
    texts, c, q = embedded
    order, _ = _brute_force_ranking(q, c)
    for m, ok, row in zip(mined, allowed, range(len(examples))):
        assert not set(m.neg) & set(m.example.pos)
        ranks = [int(np.flatnonzero(order[row] == texts.index(t))[0]) for t in m.neg]
        assert all(options.range_min <= r < options.range_max for r in ranks)
        if options.sampling_strategy == "top":
            assert list(m.neg) == ok[: options.num_negatives]
        else:
            assert set(m.neg) <= set(ok) and len(m.neg) == min(len(ok), options.num_negatives)
            assert ranks == sorted(ranks)
        np.testing.assert_allclose(m.neg_scores, [float(c[texts.index(t)] @ q[row]) for t in m.neg], atol=1e-5)
    assert stats.queries == len(examples) and stats.negatives == sum(len(m.neg) for m in mined)
    assert (stats.filtered > 0) == options.filtered  # the filters really acted on this data
    assert sum(len(m.neg) for m in mined) > 0


def test_options_are_checked():
    assert parse_range("10-210") == (10, 210)
    with pytest.raises(ValueError, match="expected MIN-MAX"):
        parse_range("10")
    with pytest.raises(ValueError, match="fewer than num_negatives"):
        MiningOptions(num_negatives=5, range_min=2, range_max=4)
    assert MiningOptions(num_negatives=3, range_min=2).resolved_range_max(2) == 7  # sentence-transformers' rule
    assert MiningOptions(num_negatives=3, max_score=0.9).resolved_range_max(1) == 31


def test_mine_and_score_commands(setup, tmp_path):
    model, encoder, examples, _ = setup
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"query": e.query, "pos": list(e.pos)}) + "\n" for e in examples[:20]))
    out = tmp_path / "mined.jsonl"
    fv = flags.FlagValues()
    mine.define_flags(fv)
    fv([
        "mine", f"--model={model}", f"--input={data}", f"--output={out}", "--range_for_sampling=2-15",
        "--num_negatives=3", "--sampling_strategy=top", "--output_scores", f"--batch_size={BATCH}",
        f"--max_seq_length={MAX_LEN}",
    ])
    mine.main(["mine"], fv)
    (loaded,) = load_datasets([{"path": str(out)}])  # validates neg_scores / pos_scores lengths
    assert all(len(e.neg) == 3 and len(e.neg_scores) == 3 for e in loaded.examples)
    with pytest.raises(FileExistsError, match="--overwrite"):
        mine.main(["mine"], fv)
    folder = tmp_path / "as_datasets"  # the same records as a `datasets` (JSON files) folder
    folder.mkdir()
    (folder / "part.json").write_text(data.read_text())
    again = tmp_path / "again.jsonl"
    mine.mine_file(model, str(folder), str(again),
                   MiningOptions(num_negatives=3, range_min=2, range_max=15, output_scores=True),
                   max_seq_length=MAX_LEN, batch_size=BATCH, progress=False)
    assert again.read_text() == out.read_text()

    scored = tmp_path / "scored.jsonl"
    n = score.score_file(model, str(out), str(scored), max_seq_length=MAX_LEN, batch_size=BATCH, progress=False)
    (rescored,) = load_datasets([{"path": str(scored)}])
    assert n == 20
    want = teacher_scores(encoder, loaded.examples, batch_size=BATCH, progress=False)
    for e, (ps, ns) in zip(rescored.examples, want):
        # the command's encoder splits rows over the 8 devices (float error of the partitioned program)
        np.testing.assert_allclose(e.pos_scores, ps, atol=3e-5)
        np.testing.assert_allclose(e.neg_scores, ns, atol=3e-5)
        np.testing.assert_allclose(e.neg_scores, [s for s in loaded.examples[e.index].neg_scores], atol=1e-5)


def test_encoder_splits_rows_over_the_devices(setup):
    """The miner's encoder (data_mesh over the 8 fake devices) gives the one-device embeddings, packed
    and padded; row counts that are not a multiple of 8 are rounded up."""
    model, encoder, examples, _ = setup
    sharded = mine.encoder_for(model, MAX_LEN)
    assert sharded.mesh is not None and sharded.mesh.size == 8 and data_mesh(sharded.mesh.devices[:1]) is None
    texts = corpus_of(examples)[:37]
    try:
        for packing in (True, False):
            sharded.packing = encoder.packing = packing
            want = encoder.encode(texts, batch_size=BATCH)
            # the partitioned program sums in another order: float error, amplified by the wide random init
            np.testing.assert_allclose(sharded.encode(texts, batch_size=BATCH), want,
                                       atol=3e-5 * float(np.abs(want).max()), err_msg=f"packing={packing}")
    finally:
        encoder.packing = True
