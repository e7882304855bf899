"""The architecture spec: each fact about an architecture is read from its ARCHS entry."""

import re

import pytest

from boom_jax.evaluation.mteb_encoder import INSTRUCTION_ARCHS, uses_instructions
from boom_jax.models.config import ModelConfig
from boom_jax.models.registry import (
    ARCHS,
    UNLIMITED_LENGTH,
    UnsupportedArchitectureError,
    arch_names,
    get_arch,
    max_text_length,
)
from boom_jax.training.config_validation import ENCODER_ONLY_ARCHS
from boom_jax.training.sharding import DEFAULT_RULES, rules_for


def test_max_text_length_follows_the_position_table():
    assert max_text_length(ModelConfig(arch="bert", max_position_embeddings=128)) == 128
    assert max_text_length(ModelConfig(arch="qwen3", max_position_embeddings=128)) == UNLIMITED_LENGTH
    with pytest.raises(UnsupportedArchitectureError, match="known architectures"):
        max_text_length(ModelConfig(arch="gpt9"))


def test_derived_views_agree_with_the_specs():
    assert ENCODER_ONLY_ARCHS == arch_names(encoder_only=True) == ("bert",)
    assert INSTRUCTION_ARCHS == arch_names(uses_instructions=True) == ("qwen3",)
    assert uses_instructions(ModelConfig(arch="qwen3")) and not uses_instructions(ModelConfig(arch="bert"))
    assert set(DEFAULT_RULES) == set(ARCHS)
    for name, spec in ARCHS.items():
        assert DEFAULT_RULES[name] is spec.sharding_rules is rules_for(name)
        assert spec.sharding_rules, name
        for rule in spec.sharding_rules:
            re.compile(rule[0])
    assert get_arch("qwen3").gated_mlp and not get_arch("bert").gated_mlp
