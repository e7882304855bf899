"""Training metrics to WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard.

On resume the JSONL file is cut back to the restored step, so the steps a killed run logged after its
last checkpoint are not counted twice.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from boom_jax.atomic_io import write_text

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else None


def read_metrics(workdir: str) -> list[dict]:
    """Every record of WORKDIR/metrics.jsonl, in order."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
    """Appends scalar metrics per step; `resume_step` drops records of later steps first."""

    def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        kept = [r for r in read_metrics(workdir) if resume_step is not None and r.get("step", 0) <= resume_step]
        write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and value is not None:
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
