"""Merge recipes (mergekit's YAML): reading them on model and HF folders, recipe.yml reproducing a merge
bit for bit, and one-line errors naming file, line and key."""

import os
import re

import numpy as np
import pytest

from boom_jax import model_io
from boom_jax.merging import MERGE_METHODS
from boom_jax.merging.methods import MergeError, flatten_with_paths
from boom_jax.merging.recipe import RECIPE_FILE, RecipeError, read_recipe
from boom_jax.merging.streaming import merge_models, merge_recipe
from boom_jax.models.config import ModelConfig
from tests.helpers_tiny_models import make_tiny_bert_folder

TINY = ModelConfig(arch="bert", vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16)


def _params(seed):
    rng = np.random.default_rng(seed)
    return {
        "embeddings": {"word": rng.normal(size=(40, 8)).astype(np.float32)},
        "encoder": {f"layer_{i}": {"attention": {"kernel": rng.normal(size=(8, 8)).astype(np.float32)},
                                   "output": {"bias": rng.normal(size=(8,)).astype(np.float32)}} for i in range(2)},
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("recipe_models")
    return root, [model_io.save_model_folder(root / f"m{i}", TINY, _params(i), minilm_path) for i in range(4)]


def _bitwise(a, b):
    fa, fb = dict(flatten_with_paths(a)[0]), dict(flatten_with_paths(b)[0])
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].tobytes() == fb[k].tobytes(), k


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_mergekit_recipe_with_filters_gradient_and_base(folders, tmp_path):
    root, (a, b, c, base) = folders
    recipe = _write(root / "ties.yml", f"""
merge_method: ties
base_model: {os.path.basename(base)}
models:
  - model: {os.path.basename(a)}
    parameters:
      weight: [{{filter: attention, value: 0.8}}, {{value: 0.4}}]
      density: 0.5
  - model: {os.path.basename(b)}
    parameters: {{weight: 0.3, density: [0.2, 0.9]}}
  - model: {c}
    parameters: {{weight: 1.1}}
parameters:
  lambda: 0.9
  normalize: false
dtype: float32
""")
    out = merge_recipe(recipe, tmp_path / "out", progress=False)
    trees = [_params(i) for i in range(3)]
    weights = {r".*attention.*": [0.8, 0.3, 1.1], "default": [0.4, 0.3, 1.1]}
    # density: per model; model b's gradient runs 0.2 (layer 0 and non-layer tensors) to 0.9 (layer 1)
    density = {r".*layer_1.*": [0.5, 0.9, 1.0], "default": [0.5, 0.2, 1.0]}
    want = MERGE_METHODS["ties"](trees, weights=weights, base=_params(3), density=density, lambda_=0.9, normalize=False)
    _bitwise(model_io.load_model(out)[1], want)


def test_recipe_on_hf_folders_matches_hf_tensor_names(tmp_path):
    hf = [make_tiny_bert_folder(tmp_path / f"hf{i}", seed=i) for i in range(2)]
    recipe = _write(tmp_path / "slerp.yml", f"""
merge_method: slerp
base_model: hf0
models:
  - model: hf0
  - model: hf1
parameters:
  t: [{{filter: "attention.self.query.weight", value: 0.9}}, {{value: 0.25}}]
""")
    out = merge_recipe(recipe, tmp_path / "out", progress=False)
    trees = [model_io.load_model(p)[1] for p in hf]
    want = MERGE_METHODS["slerp"](trees, t={r".*attention/self/query/kernel": 0.9, "default": 0.25})
    _bitwise(model_io.load_model(out)[1], want)


@pytest.mark.parametrize("method,kwargs", [
    ("multislerp", {"weights": [0.2, 0.3, 0.5]}),
    ("dare_ties", {"weights": {"encoder/.*": [1.0, 0.5, 0.2], "default": [0.3, 0.3, 0.3]}, "base": True,
                   "density": [0.4, 0.6, 0.9], "seed": 3, "lambda_": 1.2, "exclude": "embeddings/.*"}),
    ("karcher", {"base": True, "max_iter": 20}),
    ("slerp", {"t": {"encoder/layer_0/.*": 0.1, "default": 0.7}}),
    ("sce", {"base": True, "select_topk": 0.5}),
])
@pytest.mark.parametrize("streaming", [True, False])
def test_written_recipe_reproduces_the_model_bit_for_bit(folders, tmp_path, method, kwargs, streaming):
    root, (a, b, c, base) = folders
    kwargs = dict(kwargs)
    base_path = base if kwargs.pop("base", False) else None
    inputs = [a, b] if method == "slerp" else [a, b, c]
    first = merge_models(inputs, tmp_path / "first", method, base=base_path, streaming=streaming, progress=False, **kwargs)
    recipe = os.path.join(first, RECIPE_FILE)
    text = open(recipe).read()
    assert text.startswith("# Merge recipe") and f"merge_method: {method}" in text
    again = merge_recipe(recipe, tmp_path / "again", streaming=not streaming, progress=False)
    _bitwise(model_io.load_model(first)[1], model_io.load_model(again)[1])
    # The reproduced model's own recipe reproduces it too.
    third = merge_recipe(os.path.join(again, RECIPE_FILE), tmp_path / "third", progress=False)
    _bitwise(model_io.load_model(first)[1], model_io.load_model(third)[1])


@pytest.mark.parametrize("body,message", [
    ("merge_method: soup\nmodels: [m0]\n", r"soup.yml:1: merge_method: 'soup' is not a known method"),
    ("merge_method: ties\nbase_model: m3\nmodels:\n  - model: m0\n    parameters: {weight: 1, densty: 0.5}\n",
     r"soup.yml:5: models\[0\].parameters.densty: unknown per-model parameter"),
    ("merge_method: linear\nmodels:\n  - model: nowhere\n", r"soup.yml:3: models\[0\].model: 'nowhere' is not a local folder"),
    ("merge_method: linear\nmodels: [m0, m1]\nslices: []\n", r"soup.yml:3: slices: layer slices"),
    ("merge_method: ties\nmodels: [m0, m1]\n", r"soup.yml:1: merge_method: ties works on task vectors and needs base_model"),
    ("merge_method: slerp\nmodels: [m0, m1]\nparameters: {t: 0.5}\n", r"soup.yml: base_model: slerp needs `base_model`"),
    ("merge_method: task_arithmetic\nbase_model: m3\nmodels: [m0, m1]\nparameters: {lambda: .nan}\n",
     r"soup.yml:4: parameters.lambda: task_arithmetic: lambda_=nan must be a finite number"),
    ("merge_method: linear\nmodels: [m0, m1]\nparameters: {lambda: 1}\n", r"soup.yml:3: parameters.lambda: linear has no parameter"),
    ("merge_method: linear\nmodels: [m0\n", r"soup.yml:\d+: not valid YAML"),
    ("merge_method: linear\nmodels: [m0, m1]\nfoo: 1\n", r"soup.yml:3: foo: unknown key"),
])
def test_bad_recipes_name_file_line_and_key(folders, tmp_path, body, message):
    root, _ = folders
    recipe = _write(root / "soup.yml", body)
    with pytest.raises(RecipeError, match=message) as err:
        merge_recipe(recipe, tmp_path / "out", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_recipe_and_non_finite_refusal(folders, tmp_path, capsys):
    from absl import flags

    from boom_jax import merge as cli

    root, (a, b, c, base) = folders
    recipe = _write(root / "ta.yml", f"merge_method: task_arithmetic\nbase_model: {base}\nmodels: [{a}, {b}]\n"
                                    "parameters: {lambda: 0.5}\n")
    try:
        cli.main(flags.FLAGS(["merge", f"--recipe={recipe}", f"--out={tmp_path / 'ok'}", "--noexport"]))
        want = MERGE_METHODS["task_arithmetic"]([_params(0), _params(1)], base=_params(3), lambda_=0.5)
        _bitwise(model_io.load_model(tmp_path / "ok")[1], want)
        flags.FLAGS.unparse_flags()
        with pytest.raises(ValueError, match=r"--out=.*is inside the input .*ta.yml: model="):
            cli.main(flags.FLAGS(["merge", f"--recipe={recipe}", f"--out={os.path.join(a, 'sub')}", "--overwrite"]))
        capsys.readouterr()
        for extra in ([], ["--streaming"]):
            flags.FLAGS.unparse_flags()
            argv = flags.FLAGS(["merge", "--method=task_arithmetic", "--param=lambda_=nan", f"--base={base}",
                                f"--out={tmp_path / 'nan'}", *extra, a, b])
            with pytest.raises(SystemExit) as exit_info:
                cli.main(argv)
            assert exit_info.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and re.search(r"lambda_=nan must be a finite number", err[0])
            assert not (tmp_path / "nan").exists()
        # A result that overflows is refused after the merge, before anything is published.
        import jax

        huge = model_io.save_model_folder(root / "huge", TINY, jax.tree_util.tree_map(lambda x: np.full_like(x, 1e38), _params(0)), None)
        for streaming in (True, False):
            with pytest.raises(MergeError, match=r"non-finite value"):
                merge_models([huge, huge], tmp_path / "inf", "task_arithmetic", weights=[1.0, 1.0],
                             base=a, streaming=streaming, progress=False, lambda_=1e9)
            assert not (tmp_path / "inf").exists()
    finally:
        flags.FLAGS.unparse_flags()


def test_read_recipe_excludes_base_from_members(folders):
    root, (a, b, c, base) = folders
    recipe = read_recipe(_write(root / "ms.yml", f"merge_method: model_stock\nbase_model: m3\nmodels: [m3, m0, m1]\n"))
    assert recipe.members == [a, b] and recipe.base == base
    with pytest.raises(MergeError, match="model_stock has no parameter 'lambda'"):
        read_recipe(_write(root / "ms2.yml", "merge_method: model_stock\nbase_model: m3\nmodels: [m0, m1]\n"
                                            "parameters: {lambda: 1.0}\n"))
