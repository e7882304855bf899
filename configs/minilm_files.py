"""all-MiniLM-L6-v2 fine-tuned on your own JSONL (e.g. the output of python -m boom_jax.mine / score).

  --config=configs/minilm_files.py:path=runs/scored.jsonl[,smoke]

`path=` is any data path the sources read (JSONL file, folder or glob, a `datasets` folder); the file
becomes the one dataset "data". `smoke` trains 6 steps of 8 queries. The loss keys (config.loss.*:
distillation, MarginMSE, Matryoshka, false-negative masks) are set on the command line.
"""

from __future__ import annotations

import ml_collections

from configs import minilm_bls


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = dict(part.split("=", 1) if "=" in part else (part, "") for part in (arg or "").split(",") if part)
    unknown = sorted(set(options) - {"path", "smoke"})
    if unknown or not options.get("path"):
        raise ValueError(f"configs/minilm_files.py: expected path=FILE[,smoke], got {arg!r}")
    c = minilm_bls.get_config("smoke" if "smoke" in options else None)
    c.name = "minilm_files"
    c.data.source = "files"
    c.data.datasets = ml_collections.ConfigDict({"data": {"path": options["path"]}})
    return c
