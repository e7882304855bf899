"""Matmul FLOPs of a traced program, with every loop body counted as many times as it runs.

XLA's cost analysis (``compiled.cost_analysis()["flops"]``) counts the body of a while loop once, so
any step with a loop (the gradient cache's chunks, layers under ``nn.scan``) is under-counted by the
trip count. This walks the program's jaxpr instead (after dead-code elimination): every ``dot_general`` counts
``2 x output elements x contracted size``; a ``scan`` multiplies its body by its length; a ``cond``
counts its most expensive branch; remat, nested jit and custom-derivative calls are entered. The
jaxpr is the global (unsharded) program, so the count is the step's total over all devices.
Elementwise work is not counted (it is a few percent of a transformer step).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jax.extend import core as jex_core


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """``flops``: matmul FLOPs with loops unrolled by their trip counts; ``flops_loops_once``: the
    same with every loop body counted once (what XLA's cost analysis does); ``unknown_trip_loops``:
    while loops whose trip count is not static (counted once in both)."""

    flops: float
    flops_loops_once: float
    unknown_trip_loops: int = 0


def _dot_flops(eqn: Any) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contracted = math.prod(lhs_shape[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted


def _conv_flops(eqn: Any) -> float:
    # Output elements x (kernel elements per output feature), times 2 for multiply-add.
    rhs_shape = eqn.invars[1].aval.shape
    out_features = rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs_shape) / out_features


def _sub_jaxprs(value: Any):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def _count(jaxpr: Any) -> tuple[float, float, int]:
    total = once = 0.0
    unknown = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            f = _dot_flops(eqn)
            total, once = total + f, once + f
            continue
        if name == "conv_general_dilated":
            f = _conv_flops(eqn)
            total, once = total + f, once + f
            continue
        if name == "scan":
            t, o, u = _count(eqn.params["jaxpr"].jaxpr)
            total, once, unknown = total + t * eqn.params["length"], once + o, unknown + u
            continue
        if name == "cond":
            counts = [_count(b.jaxpr) for b in eqn.params["branches"]]
            t, o, u = max(counts, key=lambda c: c[0])
            total, once, unknown = total + t, once + o, unknown + u
            continue
        if name == "while":
            t, o, u = _count(eqn.params["body_jaxpr"].jaxpr)
            total, once, unknown = total + t, once + o, unknown + u + 1
            continue
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                t, o, u = _count(sub)
                total, once, unknown = total + t, once + o, unknown + u
    return total, once, unknown


def _without_dead_code(jaxpr: Any) -> Any:
    """The jaxpr without equations whose results nothing uses (XLA drops them too: e.g. the weight
    gradients of LoRA's frozen kernels, which the step replaces by zeros). Uses jax's own pass."""
    try:
        from jax._src.interpreters import partial_eval as pe
    except ImportError:  # a jax without it: count everything
        return jaxpr
    return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]


def jaxpr_flops(jaxpr: Any) -> FlopCount:
    """Matmul FLOPs of a (closed) jaxpr after dead-code elimination; see the module docstring."""
    if isinstance(jaxpr, jex_core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total, once, unknown = _count(_without_dead_code(jaxpr))
    return FlopCount(flops=total, flops_loops_once=once, unknown_trip_loops=unknown)


def traced_flops(traced: Any) -> FlopCount:
    """Matmul FLOPs of ``jax.jit(f).trace(*args)`` (a ``jax.stages.Traced``)."""
    return jaxpr_flops(traced.jaxpr)


__all__ = ["FlopCount", "jaxpr_flops", "traced_flops"]
