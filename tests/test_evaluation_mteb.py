"""mteb on the JAX encoder vs mteb on the exported sentence-transformers folder (real MiniLM weights),
the fast retrieval path vs mteb, prompts and instructions, the command line and its error messages."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import mteb
import numpy as np
import pytest
from mteb.types import PromptType
from sentence_transformers import SentenceTransformer

from boom_jax.data.builtin import builtin_eval_tasks
from boom_jax.data.records import EvalTask
from boom_jax.evaluation import metrics, report
from boom_jax.evaluation.mteb_encoder import MtebEncoder, uses_instructions
from boom_jax.evaluation.runner import (
    EvaluationError,
    evaluate_builtin_retrieval,
    evaluate_models,
    resolve_tasks,
    to_mteb_model,
)
from boom_jax.evaluation.tasks import task_metadata, to_mteb_tasks
from boom_jax.hf import export_sentence_transformers
from boom_jax.models.config import ModelConfig
from boom_jax.hf.encoders import load_encoder
from boom_jax.models.encoder import Encoder
from tests.helpers_tiny_models import make_tiny_bert_folder, make_tiny_qwen3_folder


def builtin_retrieval_subset(name: str = "wordnet_gloss_retrieval", num_queries: int = 32, num_docs: int = 64) -> EvalTask:
    """A built-in retrieval task cut to its first queries, their relevant documents and distractors."""
    (task,) = builtin_eval_tasks(names=[name])
    qids = [q for q in task.queries if task.qrels.get(q)][:num_queries]
    docs = [d for q in qids for d in task.qrels[q]]
    docs += [d for d in task.corpus if d not in set(docs)][: num_docs - len(docs)]
    return dataclasses.replace(
        task,
        queries={q: task.queries[q] for q in qids},
        corpus={d: task.corpus[d] for d in docs},
        qrels={q: task.qrels[q] for q in qids},
    )


RETRIEVAL = builtin_retrieval_subset()
PAIRS = EvalTask(
    name="TinyPairs",
    type="pair_classification",
    domain="out",
    description="Retrieve duplicate questions",
    texts1=["How old are you?", "What is your name?", "Where is Paris?", "Is it raining today?"],
    texts2=["What is your age?", "How is the weather?", "In which country is Paris?", "Do cats eat fish?"],
    labels=[1, 0, 1, 0],
)
CLUSTERING = EvalTask(
    name="TinyClustering",
    type="clustering",
    domain="out",
    description="Identify the topic of a sentence",
    texts=["The dog barked.", "A cat purred.", "The car honked.", "A truck drove by.", "The puppy slept.", "The bus was late."],
    labels=["animal", "animal", "vehicle", "vehicle", "animal", "vehicle"],
)


@pytest.fixture(scope="module")
def minilm_encoder(minilm_path):
    return load_encoder(minilm_path)


@pytest.fixture(scope="module")
def st_export(minilm_encoder, minilm_path, tmp_path_factory):
    enc = minilm_encoder
    return export_sentence_transformers(enc.params, enc.cfg, minilm_path, tmp_path_factory.mktemp("st") / "export")


def test_jax_wrapper_and_exported_folder_score_alike(minilm_encoder, st_export, tmp_path):
    tasks = [RETRIEVAL, PAIRS, CLUSTERING]
    reference = mteb.evaluate(SentenceTransformer(st_export), to_mteb_tasks(tasks), cache=None, show_progress_bar=False)
    ref = {r.task_name: r for r in reference.task_results}
    out = tmp_path / "eval"
    results = evaluate_models({"jax": minilm_encoder, "export": st_export}, tasks, out, batch_size=8, show_progress_bar=False)

    ndcg = ref[RETRIEVAL.name].get_score()
    assert 0.5 < ndcg < 0.999  # a real ranking, neither broken nor saturated
    for label in ("jax", "export"):
        for name in (RETRIEVAL.name, "TinyPairs", "TinyClustering"):
            assert results[label][name]["main_score"] == pytest.approx(ref[name].get_score(), abs=1e-4), (label, name)
    assert results["jax"]["TinyPairs"] == {**results["jax"]["TinyPairs"], "type": "pair_classification", "domain": "out"}
    # every retrieval metric in mteb's own result file, not only the main score
    saved = json.loads((out / "results" / "boom_jax__jax" / "local" / f"{RETRIEVAL.name}.json").read_text())
    saved = saved["scores"]["test"][0]
    expected = ref[RETRIEVAL.name].scores["test"][0]
    for key in ("ndcg_at_1", "ndcg_at_5", "map_at_10", "recall_at_3", "mrr_at_10"):
        assert saved[key] == pytest.approx(expected[key], abs=1e-4), key
    assert sorted(os.listdir(out)) == ["chart.png", "items", "results", "results.json", "run.json", "table.md"]
    assert report.load_results(out) == json.loads(json.dumps(results))
    assert f"| {RETRIEVAL.name} | retrieval | in | ndcg_at_10 |" in (out / "table.md").read_text()

    # the fast dev path: NumPy metrics on the same encoder give mteb's nDCG@10
    fast = evaluate_builtin_retrieval(minilm_encoder, [RETRIEVAL, PAIRS], batch_size=8)
    assert list(fast) == [RETRIEVAL.name]
    assert fast[RETRIEVAL.name] == pytest.approx(results["jax"][RETRIEVAL.name]["main_score"], abs=1e-5)  # mteb rounds

    with pytest.raises(FileExistsError, match="already exists"):
        evaluate_models({"jax": minilm_encoder}, [PAIRS], out, show_progress_bar=False)


def test_decoder_instructions_reach_queries_in_mteb_and_fast_path(tmp_path):
    wrapped = to_mteb_model(make_tiny_qwen3_folder(tmp_path / "qwen3"), "tiny qwen3")
    assert wrapped.use_instructions and wrapped.mteb_model_meta.name == "boom_jax/tiny_qwen3"
    encoder = wrapped.model
    task = builtin_retrieval_subset(num_queries=8, num_docs=16)
    qids, dids = list(task.queries), list(task.corpus)
    q = encoder.encode([task.queries[i] for i in qids], prompt=f"Instruct: {task.instruction}\nQuery:", batch_size=8)
    d = encoder.encode([task.corpus[i] for i in dids], batch_size=8)
    expected = metrics.retrieval_scores(q, d, qids, dids, task.qrels, k_values=(10,))["ndcg_at_10"]
    bare = encoder.encode([task.queries[i] for i in qids], batch_size=8)
    assert metrics.retrieval_scores(bare, d, qids, dids, task.qrels, k_values=(10,))["ndcg_at_10"] != expected
    assert evaluate_builtin_retrieval(encoder, [task], batch_size=8) == {task.name: pytest.approx(expected, abs=1e-9)}
    (result,) = mteb.evaluate(wrapped, to_mteb_tasks([task]), cache=None, show_progress_bar=False,
                              encode_kwargs={"batch_size": 8}).task_results
    assert result.get_score() == pytest.approx(expected, abs=1e-5)


def test_prompts_and_decoder_instructions(minilm_encoder):
    meta = task_metadata(RETRIEVAL)
    pair_meta = task_metadata(PAIRS)
    decoder_cfg = ModelConfig(arch="qwen3", num_key_value_heads=2, head_dim=32, pooling="lasttoken", padding_side="left")
    assert uses_instructions(decoder_cfg) and not uses_instructions(minilm_encoder.cfg)
    qwen = MtebEncoder(minilm_encoder, instructions=True)
    instruct = f"Instruct: {RETRIEVAL.instruction}\nQuery:"
    assert qwen.prompt_for(meta, PromptType.query) == instruct
    assert qwen.prompt_for(meta, PromptType.document) is None
    assert qwen.prompt_for(pair_meta, None) == "Instruct: Retrieve duplicate questions\nQuery:"
    assert qwen.mteb_model_meta.use_instructions

    cfg = dataclasses.replace(minilm_encoder.cfg, prompts={"query": "query: ", "Retrieval-document": "passage: "})
    bert = MtebEncoder(Encoder(cfg, minilm_encoder.params, minilm_encoder.tokenizer))
    assert bert.prompt_for(meta, PromptType.query) == "query: "
    assert bert.prompt_for(meta, PromptType.document) == "passage: "
    assert bert.prompt_for(pair_meta, None) is None
    assert MtebEncoder(minilm_encoder).prompt_for(meta, PromptType.query) is None


def test_task_resolution_and_bad_input(tmp_path, minilm_path):
    with pytest.raises(EvaluationError, match="does not exist"):
        to_mteb_model(str(tmp_path / "nowhere"), "x")
    # HF weights without tokenizer files, first as a plain HF folder, then as a sentence-transformers one
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(minilm_path, name), folder / name)
    with pytest.raises(EvaluationError, match="no tokenizer files"):
        to_mteb_model(str(folder), "x")
    os.symlink(os.path.join(minilm_path, "modules.json"), folder / "modules.json")
    with pytest.raises(EvaluationError, match="no tokenizer files"):
        to_mteb_model(str(folder), "x")

    out_tasks = resolve_tasks("builtin_out")
    assert out_tasks and {t.domain for t in out_tasks} == {"out"}
    assert {t.metadata.name for t in out_tasks} == {t.name for t in builtin_eval_tasks(domain="out")}
    (one,) = resolve_tasks("wordnet_gloss_retrieval")
    assert (one.boom_type, one.domain, one.metadata.main_score) == ("retrieval", "in", "ndcg_at_10")
    with pytest.raises(EvaluationError, match=r"unknown task 'wordnet_glos_retrieval'.*close: wordnet_gloss_retrieval"):
        resolve_tasks("wordnet_glos_retrieval")
    with pytest.raises(EvaluationError, match=r"unknown task 'SciFactt'.*SciFact"):
        resolve_tasks("SciFactt")
    with pytest.raises(EvaluationError, match=r"unknown benchmark 'MTEB\(eng, v3\)'.*MTEB\(eng, v2\)"):
        resolve_tasks(benchmark="MTEB(eng, v3)")
    with pytest.raises(EvaluationError, match="more than once"):
        resolve_tasks([PAIRS, PAIRS])
    bad = dataclasses.replace(PAIRS, name="BadPairs", labels=[1, 0, 2, 0])
    with pytest.raises(ValueError, match=r"'BadPairs': pair labels must be 0 or 1, got \[2\]"):
        to_mteb_tasks([bad])[0].load_data()


def test_command_line_errors(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "boom_jax.evaluate", "--tasks=builtin", f"--out={tmp_path / 'o'}"]
    run = subprocess.run(cmd + [f"--model={tmp_path / 'missing'}"], capture_output=True, text=True, env=env)
    assert run.returncode != 0 and "model path" in run.stderr and "does not exist" in run.stderr
    run = subprocess.run(cmd + [f"--model={tmp_path}", "--name=a", "--name=b"], capture_output=True, text=True, env=env)
    assert run.returncode != 0 and "--name given 2 time(s) for 1 --model(s)" in run.stderr


def test_command_line_compares_models_on_a_builtin_task(tmp_path, capsys):
    from absl import flags

    from boom_jax import evaluate

    first = make_tiny_bert_folder(tmp_path / "a", seed=0)
    second = make_tiny_bert_folder(tmp_path / "b", seed=1)
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    out = tmp_path / "report"
    fv(["evaluate", f"--model={first}", f"--model={second}", "--name=seed0", "--name=seed1",
        "--tasks=wordnet_webster_pairs", f"--out={out}", "--batch_size=64"])
    evaluate.main(["evaluate"], fv)
    results = report.load_results(out)
    assert list(results) == ["seed0", "seed1"]
    scores = [results[m]["wordnet_webster_pairs"]["main_score"] for m in results]
    assert all(0.0 < s <= 1.0 for s in scores) and scores[0] != scores[1]
    assert results["seed0"]["wordnet_webster_pairs"]["type"] == "pair_classification"
    printed = capsys.readouterr().out
    assert "| wordnet_webster_pairs | pair_classification | in | max_ap |" in printed
    assert (out / "chart.png").stat().st_size > 5000
    assert sorted(os.listdir(out / "results")) == ["boom_jax__seed0", "boom_jax__seed1"]

    # the same command again resumes (everything read back); a retrained model at the same path is refused
    evaluate.main(["evaluate"], fv)
    assert report.load_results(out) == results
    os.utime(os.path.join(first, "model.safetensors"))
    with pytest.raises(FileExistsError, match="holds results of another evaluation"):
        evaluate.main(["evaluate"], fv)


class CountingEncoder:
    """An Encoder that records every text it embeds (to see which tasks a run recomputes)."""

    def __init__(self, encoder):
        self.inner, self.cfg, self.params, self.texts = encoder, encoder.cfg, encoder.params, []

    def encode(self, texts, **kwargs):
        self.texts += list(texts)
        return self.inner.encode(texts, **kwargs)


def _flaky(task: EvalTask, state: dict):
    """`task` as an mteb task whose data loading fails while state["fail"] (a real exception mid-run)."""
    from boom_jax.evaluation.tasks import to_mteb_task

    mteb_task = to_mteb_task(task)
    cls = type(mteb_task)  # a subclass of its own: no other task is affected
    load = cls.load_data

    def load_data(self, *args, **kwargs):
        if state["fail"]:
            raise RuntimeError("the disk went away")
        return load(self, *args, **kwargs)

    cls.load_data = load_data
    return mteb_task


def test_stopped_evaluation_resumes_with_only_the_missing_tasks(tmp_path):
    encoder = load_encoder(make_tiny_bert_folder(tmp_path / "tiny"))
    out = tmp_path / "eval"
    state = {"fail": True}
    tasks = [PAIRS, _flaky(CLUSTERING, state)]
    counting = CountingEncoder(encoder)
    with pytest.raises(RuntimeError, match="the disk went away"):
        evaluate_models({"m": counting}, tasks, out, batch_size=8, show_progress_bar=False)
    folder = out / "results" / "boom_jax__m" / "local"
    first = (folder / "TinyPairs.json").read_bytes()
    assert sorted(os.listdir(folder)) == ["TinyPairs.json", "model_meta.json", "run_settings.jsonl"]
    assert not (out / "results.json").exists() and set(PAIRS.texts1) <= set(counting.texts)

    state["fail"] = False
    counting.texts = []
    resumed = evaluate_models({"m": counting}, tasks, out, batch_size=8, show_progress_bar=False)
    assert (folder / "TinyPairs.json").read_bytes() == first  # read back, not recomputed
    assert not set(PAIRS.texts1) & set(counting.texts) and set(CLUSTERING.texts) <= set(counting.texts)
    fresh = evaluate_models({"m": encoder}, [PAIRS, CLUSTERING], tmp_path / "uninterrupted", batch_size=8,
                            show_progress_bar=False)
    for name in ("TinyPairs", "TinyClustering"):
        assert resumed["m"][name]["main_score"] == fresh["m"][name]["main_score"], name
    assert report.load_results(out) == json.loads(json.dumps(resumed))
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["ran"] == ["TinyPairs", "TinyClustering"] and run["skipped"] == {}
    assert run["results"] == {"m": os.path.join("results", "boom_jax__m", "local")}
    # the same folder for another evaluation is refused, and nothing in it changes
    with pytest.raises(FileExistsError, match="holds results of another evaluation"):
        evaluate_models({"m": encoder}, [PAIRS], out, show_progress_bar=False)
    assert (folder / "TinyPairs.json").read_bytes() == first


def test_model_meta_comes_from_the_model_and_its_provenance(tmp_path):
    import torch

    from boom_jax.hf import load_hf_model
    from mteb.models.model_meta import ScoringFunction

    src = make_tiny_bert_folder(tmp_path / "tiny")
    cfg, params = load_hf_model(src)
    provenance = {"kind": "trained", "name": "tiny", "base_model": "sentence-transformers/all-MiniLM-L6-v2",
                  "license": "apache-2.0", "language": ["en"],
                  "training": {"datasets": [{"name": "web", "examples": 4}, {"name": "faq", "examples": 2}]}}
    folder = export_sentence_transformers(params, cfg.replace(similarity="dot"), src, tmp_path / "export",
                                          provenance=provenance)
    n_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
    for backend in ("sentence_transformers", "jax"):
        wrapped = to_mteb_model(folder, "tiny", backend=backend, meta_overrides={"name": "org/tiny", "revision": "abc1"})
        meta = wrapped.mteb_model_meta
        assert (meta.name, meta.revision, meta.embed_dim, meta.max_tokens) == ("org/tiny", "abc1", 32, cfg.max_seq_length)
        assert meta.similarity_fn_name == ScoringFunction.DOT_PRODUCT, backend  # a dot model is scored as dot
        assert meta.n_parameters == n_params, backend
        assert meta.memory_usage_mb == pytest.approx(meta.n_parameters * 4 / 2**20, abs=0.01)
        assert (meta.license, meta.languages, meta.adapted_from) == (
            "apache-2.0", ["eng-Latn"], "sentence-transformers/all-MiniLM-L6-v2")
        assert meta.training_datasets == {"web", "faq"}
        a, b = torch.randn(3, 32), torch.randn(2, 32)
        np.testing.assert_allclose(np.asarray(wrapped.similarity(a, b)), (a @ b.T).numpy(), rtol=1e-5, atol=1e-5)


def test_tasks_that_cannot_run_offline_are_listed_as_skipped(tmp_path, capsys):
    import mteb

    from boom_jax.evaluation.runner import skip_reason

    closed = next(t for t in mteb.get_benchmark("RTEB(beta)").tasks if t.metadata.is_public is False)
    assert skip_reason(closed).startswith("closed dataset")
    encoder = load_encoder(make_tiny_bert_folder(tmp_path / "tiny"))
    out = tmp_path / "eval"
    results = evaluate_models({"m": encoder}, [PAIRS], out, benchmark="RTEB(beta)", batch_size=8,
                              show_progress_bar=False)
    run = json.loads((out / "run.json").read_text())
    num = len(mteb.get_benchmark("RTEB(beta)").tasks)
    assert run["ran"] == ["TinyPairs"] and len(run["skipped"]) == num and list(results["m"]) == ["TinyPairs"]
    assert run["skipped"][closed.metadata.name].startswith("closed dataset")
    assert any("could not be loaded" in r and "Offline" in r for r in run["skipped"].values())
    assert run["summary"].startswith(f"1 of {num + 1} tasks ran; {num} skipped: ")
    assert run["summary"] in capsys.readouterr().out


def test_decoder_template_is_mteb_qwen3_loaders():
    from mteb.models.model_implementations.qwen3_models import instruction_template

    from boom_jax.evaluation.mteb_encoder import MTEB_INSTRUCTION_TEMPLATE

    # pinned against mteb's own Qwen3-Embedding loader (a change there shows here)
    assert MTEB_INSTRUCTION_TEMPLATE.format(instruction="Find it") == instruction_template("Find it", PromptType.query)
    assert instruction_template("Find it", PromptType.document) == ""
    wrapped = MtebEncoder(Encoder.__new__(Encoder), instructions=True, instruction_template="Task: {instruction}\n")
    assert wrapped.prompt_for(task_metadata(RETRIEVAL), PromptType.query) == f"Task: {RETRIEVAL.instruction}\n"
    with pytest.raises(ValueError, match="must contain"):
        MtebEncoder(Encoder.__new__(Encoder), instructions=True, instruction_template="Query: ")
