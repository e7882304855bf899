"""One process of a (possibly multi-process) training run of configs/tiny.py, for the distributed test.

    python tests/distributed_worker.py OUT STEPS [COORDINATOR NUM_PROCESSES PROCESS_ID]

Every process loads its slice of each global batch, the steps run as one SPMD program over all
processes' devices, every process takes part in an Orbax save of the final state, and process 0
writes OUT/params.npz (the params gathered to the host) and OUT/losses.json.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def main(out: str, steps: int, coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    from boom_jax.training.distributed import maybe_initialize

    distributed = coordinator is not None
    assert maybe_initialize(distributed, coordinator, num_processes, process_id) == distributed
    assert maybe_initialize(distributed, coordinator, num_processes, process_id) == distributed  # idempotent

    import jax
    from absl import logging as absl_logging

    from boom_jax.data.batcher import Batcher
    from boom_jax.models import build_model
    from boom_jax.tokenization import TextTokenizer, load_tokenizer
    from boom_jax.training.checkpoint import TrainCheckpointer
    from boom_jax.training.distributed import global_batch, is_main_process, to_host
    from boom_jax.training.model_setup import load_model_for_training
    from boom_jax.training.run_setup import build_optimizer
    from boom_jax.training.train_data import prepare_datasets
    from boom_jax.training.sharding import DEFAULT_RULES, make_mesh
    from boom_jax.training.step import init_train_state, make_train_step, module_embed_fn, train_state_shardings
    from configs import tiny

    absl_logging.set_verbosity(absl_logging.WARNING)
    config = tiny.get_config()
    with config.unlocked():
        config.data.limit = 16
        config.data.names = "wordnet_gloss,debian_desc"
        config.train.max_steps = steps
    rng = jax.random.PRNGKey(config.seed)
    cfg, params, tokenizer_dir = load_model_for_training(config, rng)
    datasets = prepare_datasets(config, out, None, None)
    tokenizer = load_tokenizer(tokenizer_dir)
    query_tok = TextTokenizer(tokenizer, config.data.query_max_len, buckets=(config.data.query_max_len,))
    passage_tok = TextTokenizer(tokenizer, config.data.passage_max_len, buckets=(config.data.passage_max_len,))
    batcher = Batcher(datasets, query_tok, passage_tok, config.train.batch_size,
                      group_size=config.data.train_group_size, seed=config.seed, num_epochs=None,
                      process_index=jax.process_index(), process_count=jax.process_count())

    mesh = make_mesh((("data", -1), ("fsdp", 2), ("tensor", 1)))
    optimizer, schedule, trainable = build_optimizer(config, cfg, steps)
    shardings = train_state_shardings(params, optimizer, rng, mesh, DEFAULT_RULES[cfg.arch])
    params = jax.device_put(params, shardings["params"])
    state = jax.jit(lambda p, r: init_train_state(p, optimizer, r), out_shardings=shardings)(params, rng)
    train_step = make_train_step(module_embed_fn(build_model(cfg)), optimizer, config.train.temperature,
                                 schedule=schedule, mesh=mesh, state_shardings=shardings)
    losses = []
    for _ in range(steps):
        state, metrics = train_step(state, global_batch(next(batcher), mesh))
        losses.append(float(jax.device_get(metrics["loss"])))

    ckpt = TrainCheckpointer(os.path.join(out, "run"), every_steps=steps, keep=1, async_save=False)
    ckpt.save(steps, state, batcher.state(), {"steps": steps})
    ckpt.close()
    params = to_host(state["params"])
    if is_main_process():
        flat = {"/".join(str(k.key) for k in path): leaf
                for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(os.path.join(out, "params.npz"), **flat)
        with open(os.path.join(out, "losses.json"), "w") as f:
            json.dump({"losses": losses, "process_count": jax.process_count(),
                       "device_count": jax.device_count()}, f)


if __name__ == "__main__":
    args = sys.argv[1:]
    dist = (args[2], int(args[3]), int(args[4])) if len(args) > 2 else (None, None, None)
    main(args[0], int(args[1]), *dist)
