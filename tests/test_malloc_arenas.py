"""cap_malloc_arenas: in force on glibc, steps aside for the user's MALLOC_ARENA_MAX, refuses nonsense.

The cases that reach mallopt run in a subprocess: the cap is process-wide and the test process
should keep glibc's default.
"""

import os
import subprocess
import sys

import pytest

from boom_jax.malloc_arenas import ENV, cap_malloc_arenas

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cap_in_subprocess(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if env_value is not None:
        env[ENV] = env_value
    code = "from boom_jax.malloc_arenas import cap_malloc_arenas; print(cap_malloc_arenas(2))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return run.stdout.strip()


def test_cap_is_in_force_on_glibc():
    assert os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")  # this project's CI machines
    assert _cap_in_subprocess(None) == "True"


def test_users_malloc_arena_max_wins():
    assert _cap_in_subprocess("4") == "False"


def test_fewer_than_one_arena_is_refused():
    with pytest.raises(ValueError, match="arenas=0: expected at least 1"):
        cap_malloc_arenas(0)
