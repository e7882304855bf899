"""Training configs: the shipped ones validate, and every bad setting fails naming its key."""

import importlib

import ml_collections
import pytest

from boom_jax.train import parse_config
from boom_jax.training.config_validation import SCHEMA, ConfigError, validate_config
from configs import common, tiny

SHIPPED = ["tiny", "minilm_bls", "qwen3_0p6b_bls", "qwen3_4b_lora_bls"]


def _flat_keys(d, prefix=""):
    keys = set()
    for k, v in d.items():
        path = prefix + k
        if isinstance(v, ml_collections.ConfigDict) and SCHEMA.get(path) != "dict":
            keys |= _flat_keys(v, path + ".")
        else:
            keys.add(path)
    return keys


def test_schema_matches_common_defaults():
    assert _flat_keys(common.base_config()) == set(SCHEMA)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_shipped_configs_validate(name, arg):
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    arch = "qwen3" if name.startswith("qwen3") else "bert"
    if arch == "qwen3":
        with pytest.raises(ConfigError, match=r"config\.model\.path is empty"):
            validate_config(config, device_count=8, arch=arch)
        config.model.path = "/models/Qwen3"
    validate_config(config, device_count=8, arch=arch)


def test_paper_recipes():
    c06 = importlib.import_module("configs.qwen3_0p6b_bls").get_config()
    assert (c06.train.batch_size, c06.train.learning_rate, c06.train.warmup_ratio, c06.train.epochs) == (256, 5e-5, 0.1, 1)
    assert (c06.train.temperature, c06.data.train_group_size, c06.data.query_max_len) == (0.02, 8, 512)
    assert (c06.model.pooling, c06.model.dtype, c06.model.remat, c06.model.lora_rank) == ("lasttoken", "bfloat16", True, 0)
    assert c06.model.query_prompt_template == "Instruct: {instruction}\nQuery: "
    c4 = importlib.import_module("configs.qwen3_4b_lora_bls").get_config()
    assert (c4.model.lora_rank, c4.model.lora_alpha, c4.model.lora_dropout, c4.train.batch_size) == (32, 32.0, 0.1, 128)


def _set(config, key, value):
    """Set a dotted key, bypassing ConfigDict's own type checks (to exercise ours)."""
    d = config.to_dict()
    section, _, name = key.rpartition(".")
    target = d
    for part in section.split(".") if section else []:
        target = target.setdefault(part, {})
    target[name] = value
    return ml_collections.ConfigDict(d)


BAD = [
    ({"train.batch_size": 32, "train.grad_cache_chunk": 48}, "bert",
     "config.train.grad_cache_chunk=48 must divide config.train.batch_size=32"),
    ({"train.batch_size": 32, "train.grad_cache_chunk": 12}, "bert",
     "config.train.grad_cache_chunk=12 must divide config.train.batch_size=32"),
    ({"mesh.data": 3}, "bert", "config.mesh (data=3, fsdp=1, tensor=1) has 3 devices but 8 are available"),
    ({"mesh.fsdp": 3}, "bert", "config.mesh (data=-1, fsdp=3, tensor=1): the fixed axes"),
    ({"train.batch_size": 12}, "bert", "config.train.batch_size=12 must be divisible by the data-parallel shards"),
    ({"model.lora_rank": 8}, "bert", "config.model.lora_rank=8: LoRA is only supported for decoder models"),
    ({"data.schedule": "round_robin"}, None, "config.data.schedule='round_robin' is not a known schedule"),
    ({"model.pooling": "max"}, None, "config.model.pooling='max' is not one of"),
    ({"model.dtype": "float16"}, None, "config.model.dtype='float16' is not one of"),
    ({"train.lr_schedule": "step"}, None, "config.train.lr_schedule='step' is not one of"),
    ({"data.subset_ratio": 0.0}, None, "config.data.subset_ratio=0.0 must be in (0, 1]"),
    ({"data.subset_ratio": 1.5}, None, "config.data.subset_ratio=1.5 must be in (0, 1]"),
    ({"bag.ratios": [0.5, 1.2]}, None, "config.bag.ratios[1]=1.2 must be in (0, 1]"),
    ({"train.batch_size": "32"}, None, "config.train.batch_size='32' has type str; expected int"),
    ({"train.batch_size": 32.0}, None, "config.train.batch_size=32.0 has type float; expected int"),
    ({"model.normalize": 1}, None, "config.model.normalize=1 has type int; expected bool"),
    ({"train.foo": 1}, None, "config.train.foo is not a known key"),
    ({"train.temperature": 0.0}, None, "config.train.temperature=0.0 must be a finite number > 0"),
    ({"train.learning_rate": -1e-4}, None, "config.train.learning_rate=-0.0001 must be a finite number > 0"),
    ({"train.warmup_ratio": 1.0}, None, "config.train.warmup_ratio=1.0 must be in [0, 1)"),
    ({"data.train_group_size": 0}, None, "config.data.train_group_size=0 must be >= 1"),
    ({"model.lora_targets": "q,x"}, None, "config.model.lora_targets: unknown target 'x'"),
    ({"data.source": "files"}, None, "config.data.datasets is empty but config.data.source='files'"),
]


@pytest.mark.parametrize("changes,arch,message", BAD, ids=[m.split()[0] for _, _, m in BAD])
def test_bad_config_names_the_key(changes, arch, message):
    config = tiny.get_config()
    for key, value in changes.items():
        config = _set(config, key, value)
    with pytest.raises(ConfigError) as err:
        validate_config(config, device_count=8, arch=arch)
    assert message in str(err.value)


def test_dataset_spec_errors_name_the_dataset_key():
    config = importlib.import_module("configs.qwen3_0p6b_bls").get_config()
    config.model.path = "/models/Qwen3"
    config = _set(config, "data.datasets.nq.limt", 5)
    with pytest.raises(ConfigError, match=r"config\.data\.datasets\.nq: unknown setting\(s\) \['limt'\]"):
        validate_config(config)


def test_command_line_overrides_and_errors():
    config = parse_config(["prog", "--config=configs/tiny.py:smoke", "--config.train.batch_size=16",
                           "--config.model.sizes.hidden_size=64"])
    assert (config.train.batch_size, config.train.max_steps, config.model.sizes.hidden_size) == (16, 4, 64)
    with pytest.raises(ConfigError, match=r"config\.train\.batchsize is not a known key; did you mean config\.train\.batch_size"):
        parse_config(["prog", "--config=configs/tiny.py", "--config.train.batchsize=16"])
    with pytest.raises(Exception, match=r"config\.train\.batch_size=abc"):
        parse_config(["prog", "--config=configs/tiny.py", "--config.train.batch_size=abc"])
    with pytest.raises(Exception, match="unknown argument 'fast'"):
        parse_config(["prog", "--config=configs/tiny.py:fast"])
