"""Two bag members trained at once (stacked on a "member" mesh axis, 2 members x 4 fake CPU devices)
end with the same params as training them one after the other with the ordinary loop, although
their subsets (and so their step counts and lr schedules) differ."""

import os

import jax
import numpy as np
import pytest

from boom_jax.boom.bag import Member, member_config, member_subset, train_member
from boom_jax.model_io import load_model
from boom_jax.training.train_data import load_train_datasets
from boom_jax.training.stacked import StackedMember, stack_batches, stacked_mesh, train_stacked
from configs import bag as bag_config
from configs import tiny

RATIOS = (0.5, 1.0)


@pytest.fixture(scope="module")
def config():
    c = tiny.get_config()
    with c.unlocked():
        c.bag = bag_config.bag_section()
        c.bag.ratios = RATIOS
        c.data.names = "wordnet_gloss,debian_desc"
        c.data.limit = 16
        c.train.max_steps = 0  # one epoch of each member's subset: 2 and 4 steps
        c.train.warmup_ratio = 0.25
        c.train.log_every = 1
        c.checkpoint.async_save = False
    return c


@pytest.fixture(scope="module")
def runs(config, tmp_path_factory):
    base = tmp_path_factory.mktemp("stacked")
    datasets = load_train_datasets(config)
    members = [Member(i, f"r{int(r * 100):03d}", r, 100 + i) for i, r in enumerate(RATIOS)]
    stacked = [StackedMember(m.name, member_config(config, m), member_subset(datasets, m, config.bag.sampling))
               for m in members]
    records = train_stacked(config, str(base / "stacked"), stacked, datasets)
    sequential = [train_member(config, str(base / "sequential"), m, datasets) for m in members]
    return base, members, records, sequential


def test_stacked_members_equal_sequential_members(runs):
    base, members, records, sequential = runs
    assert [r["steps"] for r in records] == [r["steps"] for r in sequential] == [2, 4]
    for member, rec, seq in zip(members, records, sequential):
        assert rec["model"] == os.path.join(str(base / "stacked"), "members", member.name, "model")
        _, got, _ = load_model(rec["model"])
        _, want, _ = load_model(seq["model"])
        for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5, err_msg=f"{member.name} {path}")
        _, other, _ = load_model(records[1 - member.index]["model"])
        apart = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(other)))
        assert apart > 1e-4  # the two members really differ (different data and step counts)
        assert rec["final_loss"] == pytest.approx(seq["final_loss"], rel=1e-4)
        assert os.path.exists(os.path.join(os.path.dirname(rec["model"]), "subset_manifest.json"))


def test_stacked_batches_refuse_mismatched_groups(config):
    a = {"query_ids": np.zeros((2, 4), np.int32), "query_mask": np.ones((2, 4), np.int32),
         "passage_ids": np.zeros((4, 4), np.int32), "passage_mask": np.ones((4, 4), np.int32),
         "in_batch_negatives": True}
    b = dict(a, passage_ids=np.zeros((6, 4), np.int32), passage_mask=np.ones((6, 4), np.int32))
    with pytest.raises(ValueError, match="group size"):
        stack_batches([a, b], ["r050", "r100"])
    short = dict(a, query_ids=np.ones((2, 3), np.int32), query_mask=np.ones((2, 3), np.int32))
    out = stack_batches([a, short], ["r050", "r100"])
    assert out["query_ids"].shape == (2, 2, 4) and out["query_mask"][1, :, 3].sum() == 0
    with pytest.raises(ValueError, match="fixed_length"):
        stack_batches([a, short], ["r050", "r100"], padding_side="left")
    assert dict(stacked_mesh(2, config.mesh).shape) == {"member": 2, "data": 4, "fsdp": 1, "tensor": 1}


def test_stacked_members_carry_the_same_provenance_as_sequential_ones(runs):
    """boom.json of a stacked member records its subset (manifest hash), steps and recipe like a member
    trained alone; only the wall time and hardware may differ."""
    import json

    base, members, records, sequential = runs
    for rec, seq in zip(records, sequential):
        with open(os.path.join(os.path.dirname(rec["model"]), "boom.json")) as f:
            got = json.load(f)
        with open(os.path.join(os.path.dirname(seq["model"]), "boom.json")) as f:
            want = json.load(f)
        for prov in (got, want):
            prov["training"].pop("wall_time_s")
            prov["training"].pop("hardware")
        assert got["training"]["subset"]["manifest_sha256"] == want["training"]["subset"]["manifest_sha256"]
        assert got == want
