"""The project's error for a bad setting: one class, so every entry point reports it the same way.

`ConfigError` names the offending key (`config.section.key`, a ModelConfig field, a flag) and says
what was expected. It is a ValueError, so callers that catch ValueError keep working. Layer 1: this
module imports nothing of the project, so models/ and training/ alike may raise it.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key and what was expected."""
