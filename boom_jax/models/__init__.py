"""Flax text encoders, their config, pooling and the architecture registry."""

from boom_jax.models.config import ConfigError, ModelConfig
from boom_jax.models.registry import (
    ARCHS,
    ArchSpec,
    UnsupportedArchitectureError,
    arch_for_model_type,
    build_model,
    get_arch,
    init_params,
)

__all__ = [
    "ARCHS",
    "ArchSpec",
    "ConfigError",
    "ModelConfig",
    "UnsupportedArchitectureError",
    "arch_for_model_type",
    "build_model",
    "get_arch",
    "init_params",
]
