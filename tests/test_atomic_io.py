"""atomic_io: a folder appears whole or not at all, and an existing one is replaced only when asked."""

import os

import pytest

from boom_jax.atomic_io import atomic_folder, write_json


def test_atomic_folder_publishes_refuses_and_swaps(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        write_json(os.path.join(tmp, "a.json"), {"v": 1})
        assert not out.exists()
    assert (out / "a.json").read_text() == '{\n  "v": 1\n}\n'
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_folder(out) as tmp:
            write_json(os.path.join(tmp, "a.json"), {"v": 2})
    with atomic_folder(out, overwrite=True) as tmp:
        write_json(os.path.join(tmp, "b.json"), {"v": 3})
    assert sorted(os.listdir(out)) == ["b.json"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporaries or parked old folders left


def test_a_failed_write_leaves_the_old_folder_and_no_temporaries(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(out, overwrite=True) as tmp:
            write_json(os.path.join(tmp, "new.json"), {})
            raise RuntimeError("boom")
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
