"""Contrastive losses over groups [query, positive, hard negatives...]: InfoNCE and a small registry of
terms that combine with it (distillation, MarginMSE), Matryoshka truncation, and negative masks.

Layout: queries ``q [B, D]`` and passages ``p [B * G, D]`` in *group layout*: rows
``i * G .. i * G + G - 1`` of ``p`` are query ``i``'s positive (first) and its ``G - 1`` hard negatives.

Scores are ``cos(q, p) / temperature``: the temperature divides the cosine similarity, so a small value
(the BOOM paper uses 0.02) sharpens the softmax; 1.0 leaves raw cosines in [-1, 1] as logits.

Negatives of a query:
- ``in_batch_negatives=True``: every passage of the (global) batch, i.e. its own hard negatives, the
  other queries' positives and their hard negatives. The label is the column of ITS positive, ``i * G``.
- ``in_batch_negatives=False`` (classification / clustering data): only its own group's ``G`` passages;
  the other columns are masked out, which equals a softmax over the group with label 0.

Cross-device negatives: inside ``shard_map`` (or any context with a named axis), pass ``axis_name``:
passages (and queries, for the query-side terms) are all-gathered (tiled, in device order) over that
axis, so the local query ``i`` on device ``d`` sees the whole global batch and its label is
``(d * B_local + i) * G`` in the gathered matrix. The returned loss is the mean over the GLOBAL batch
(a psum of local sums over the axis), so loss and gradients equal the single-device computation on the
concatenated batch. Under plain ``jit`` on a mesh (GSPMD) the arrays are already global: no axis name.

:func:`combined_loss` (what the train step calls) is ``sum_d w_d * sum_t weight_t * term_t(q[:, :d],
p[:, :d])`` over the Matryoshka dimensions ``d`` (one full-width pass when none are set) and the terms
``t`` of :data:`LOSS_TERMS` with a non-zero weight in :class:`LossSpec`. Every term is a function of the
embeddings only, so the gradient cache's embedding-gradient pass covers it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

AxisName = str | Sequence[str] | None

# Masked logits: large and negative, but finite so that exp/grad never produce NaN.
_MASKED_LOGIT = -1e9


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _axis_tuple(axis_name: AxisName) -> tuple[str, ...]:
    if axis_name is None:
        return ()
    if isinstance(axis_name, str):
        return (axis_name,)
    return tuple(axis_name)


def _check_shapes(q: jax.Array, p: jax.Array, temperature: float) -> int:
    """The group size G; shape errors name what is wrong."""
    if q.ndim != 2 or p.ndim != 2:
        raise ValueError(f"info_nce expects q [B, D] and p [B*G, D]; got q {q.shape}, p {p.shape}")
    b, d = q.shape
    if p.shape[1] != d:
        raise ValueError(f"info_nce: q and p have different widths: q {q.shape}, p {p.shape}")
    if b == 0 or p.shape[0] % b != 0:
        raise ValueError(
            f"info_nce: passages ({p.shape[0]}) must be a multiple of queries ({b}) in group layout"
        )
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    return p.shape[0] // b


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Which loss terms run and how they combine (config section ``loss``; every extra is off by default).

    - ``info_nce_weight``: weight of InfoNCE (1.0; 0 drops it, e.g. pure distillation).
    - ``kd_weight``: FlagEmbedding's ``kd_loss_type="kl_div"`` distillation term (see :func:`kd_per_query`);
      FlagEmbedding itself adds it to InfoNCE with weight 1. ``teacher_temperature`` divides the teacher
      scores before their softmax (FlagEmbedding: 1, the raw scores).
    - ``margin_mse_weight``: sentence-transformers' MarginMSELoss (see :func:`margin_mse_per_query`).
    - ``matryoshka_dims`` / ``matryoshka_weights``: the loss is the weighted sum of the whole loss at each
      truncated, re-normalized width (sentence-transformers' MatryoshkaLoss; weights default to 1). Empty =
      one pass at the full width.
    - ``fake_negative_margin``: None = off; else a negative (any column but the positive, in every term)
      whose cosine to the anchor exceeds the positive's cosine by more than this margin is masked out
      (Qwen3-Embedding's false-negative mask uses 0.1).
    - ``query_query`` / ``passage_passage`` / ``passage_query``: extra in-batch negatives in the InfoNCE
      denominator: other queries vs the query, other passages vs the positive, other queries vs the
      positive. All three = GTE's "improved contrastive loss"; ``query_query`` + ``passage_passage`` +
      the fake-negative mask = the Qwen3-Embedding loss. They follow ``in_batch_negatives`` (off = none).
    - ``mask_duplicates``: a negative whose text equals one of the query's positives (given by the batch
      as ``false_negatives``), or a query text repeated in the batch (``duplicate_queries``), is masked.
    """

    temperature: float = 0.02
    info_nce_weight: float = 1.0
    kd_weight: float = 0.0
    teacher_temperature: float = 1.0
    margin_mse_weight: float = 0.0
    matryoshka_dims: tuple[int, ...] = ()
    matryoshka_weights: tuple[float, ...] = ()
    fake_negative_margin: float | None = None
    query_query: bool = False
    passage_passage: bool = False
    passage_query: bool = False
    mask_duplicates: bool = True

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"loss: temperature must be > 0, got {self.temperature}")
        if not self.teacher_temperature > 0:
            raise ValueError(f"loss: teacher_temperature must be > 0, got {self.teacher_temperature}")
        if self.matryoshka_weights and len(self.matryoshka_weights) != len(self.matryoshka_dims):
            raise ValueError(f"loss: matryoshka_weights {self.matryoshka_weights} must have one weight per "
                             f"dimension of matryoshka_dims {self.matryoshka_dims}")
        if any(d < 1 for d in self.matryoshka_dims):
            raise ValueError(f"loss: matryoshka_dims {self.matryoshka_dims} must be positive")
        if not any(self.term_weights().values()):
            raise ValueError(f"loss: every term weight is 0 ({', '.join(loss_weight_keys())})")

    def term_weights(self) -> dict[str, float]:
        """Term name (a LOSS_TERMS key) -> its weight (the `<name>_weight` field)."""
        return {name: getattr(self, f"{name}_weight") for name in LOSS_TERMS}

    @property
    def needs_teacher_scores(self) -> bool:
        return any(self.term_weights()[name] for name in TEACHER_TERMS)

    def dims_and_weights(self, width: int) -> list[tuple[int, float]]:
        """(dim, weight) pairs; [(width, 1.0)] without Matryoshka. A dim above ``width`` is an error."""
        if not self.matryoshka_dims:
            return [(width, 1.0)]
        too_wide = [d for d in self.matryoshka_dims if d > width]
        if too_wide:
            raise ValueError(f"loss: matryoshka_dims {too_wide} exceed the embedding width {width}")
        weights = self.matryoshka_weights or (1.0,) * len(self.matryoshka_dims)
        return list(zip(self.matryoshka_dims, weights))


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """The per-batch arrays besides the embeddings (any may be None). Shapes are LOCAL rows: under
    ``axis_name`` a device holds its queries' rows, with columns over the GLOBAL batch.

    in_batch_negatives  bool or [B] bool
    teacher_scores      [B * G] float, the teacher's score of each passage for its own query (NaN = none;
                        a query whose group holds a NaN gets no distillation terms)
    false_negatives     [B, B_global * G] bool: passage j duplicates one of query i's positives
    duplicate_queries   [B, B_global] bool: query j has query i's text (j != i)
    """

    in_batch_negatives: Any = True
    teacher_scores: Any = None
    false_negatives: Any = None
    duplicate_queries: Any = None


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every term needs: normalized embeddings, gathered copies, indices (built once per width)."""

    qn: jax.Array  # [B, D] local queries, normalized
    pn: jax.Array  # [B * G, D] local passages, normalized
    q_all: jax.Array  # [B_global, D]
    p_all: jax.Array  # [B_global * G, D]
    group: int
    global_row: jax.Array  # [B] each local query's index in the global batch
    in_batch: jax.Array  # [B] bool
    inputs: LossInputs
    spec: LossSpec


def _context(q, p, spec: LossSpec, inputs: LossInputs, axes: tuple[str, ...]) -> _Context:
    g = _check_shapes(q, p, spec.temperature)
    b = q.shape[0]
    qn, pn = _l2_normalize(q), _l2_normalize(p)
    if axes:
        q_all = lax.all_gather(qn, axes, axis=0, tiled=True)
        p_all = lax.all_gather(pn, axes, axis=0, tiled=True)
        device_index = lax.axis_index(axes)
    else:
        q_all, p_all, device_index = qn, pn, 0
    in_batch = jnp.broadcast_to(jnp.asarray(inputs.in_batch_negatives, dtype=bool), (b,))
    return _Context(qn, pn, q_all, p_all, g, device_index * b + jnp.arange(b), in_batch, inputs, spec)


def _fake_negatives(cos: jax.Array, positive_cos: jax.Array, margin: float | None) -> jax.Array:
    """True where a candidate's cosine exceeds the positive's by more than ``margin`` (None: never)."""
    if margin is None:
        return jnp.zeros(cos.shape, bool)
    return cos > positive_cos[:, None] + margin


def info_nce_terms(ctx: _Context) -> jax.Array:
    """Per-query InfoNCE ``[B]`` with the spec's masks and extra negative blocks (module docstring)."""
    spec, t = ctx.spec, ctx.spec.temperature
    g = ctx.group
    labels = ctx.global_row * g
    margin = spec.fake_negative_margin

    qp = ctx.qn @ ctx.p_all.T  # [B, N_global] cosines
    positive_cos = jnp.take_along_axis(qp, labels[:, None], axis=-1)[:, 0]
    columns = jnp.arange(ctx.p_all.shape[0])
    is_label = columns[None, :] == labels[:, None]
    own_group = (columns[None, :] // g) == ctx.global_row[:, None]
    allowed = own_group | ctx.in_batch[:, None]
    banned = _fake_negatives(qp, positive_cos, margin)
    if spec.mask_duplicates and ctx.inputs.false_negatives is not None:
        banned = banned | jnp.asarray(ctx.inputs.false_negatives, bool)
    blocks = [jnp.where(is_label | (allowed & ~banned), qp / t, _MASKED_LOGIT)]

    other_query = jnp.arange(ctx.q_all.shape[0])[None, :] != ctx.global_row[:, None]  # [B, B_global]
    duplicate_q = (jnp.asarray(ctx.inputs.duplicate_queries, bool)
                   if spec.mask_duplicates and ctx.inputs.duplicate_queries is not None
                   else jnp.zeros(other_query.shape, bool))
    side = ctx.in_batch[:, None]
    positives = ctx.pn[::g]  # [B, D] each local query's positive
    if spec.query_query:
        qq = ctx.qn @ ctx.q_all.T
        keep = other_query & side & ~duplicate_q & ~_fake_negatives(qq, positive_cos, margin)
        blocks.append(jnp.where(keep, qq / t, _MASKED_LOGIT))
    if spec.passage_passage:
        pp = positives @ ctx.p_all.T
        keep = ~is_label & side & ~_banned_for_positive(ctx, pp, positive_cos, margin)
        blocks.append(jnp.where(keep, pp / t, _MASKED_LOGIT))
    if spec.passage_query:
        pq = positives @ ctx.q_all.T
        keep = other_query & side & ~duplicate_q & ~_fake_negatives(pq, positive_cos, margin)
        blocks.append(jnp.where(keep, pq / t, _MASKED_LOGIT))
    scores = jnp.concatenate(blocks, axis=-1) if len(blocks) > 1 else blocks[0]
    return jax.nn.logsumexp(scores, axis=-1) - positive_cos / t


def _banned_for_positive(ctx: _Context, pp: jax.Array, positive_cos: jax.Array, margin: float | None):
    """Passage-passage candidates to mask: texts equal to the query's positives, and fake negatives."""
    banned = _fake_negatives(pp, positive_cos, margin)
    if ctx.spec.mask_duplicates and ctx.inputs.false_negatives is not None:
        banned = banned | jnp.asarray(ctx.inputs.false_negatives, bool)
    return banned


def _group_cosines(ctx: _Context) -> jax.Array:
    """``[B, G]`` cosines of each query with its own group (positive first)."""
    b, g = ctx.qn.shape[0], ctx.group
    return jnp.einsum("bd,bgd->bg", ctx.qn, ctx.pn.reshape(b, g, -1))


def _teacher(ctx: _Context) -> tuple[jax.Array, jax.Array]:
    """(teacher scores ``[B, G]`` with NaNs zeroed, valid ``[B]`` float)."""
    if ctx.inputs.teacher_scores is None:
        raise ValueError("loss: kd_weight / margin_mse_weight need teacher scores (pos_scores / neg_scores)")
    b, g = ctx.qn.shape[0], ctx.group
    scores = jnp.asarray(ctx.inputs.teacher_scores, jnp.float32).reshape(b, g)
    valid = jnp.all(jnp.isfinite(scores), axis=-1)
    return jnp.where(valid[:, None], scores, 0.0), valid.astype(jnp.float32)


def kd_per_query(ctx: _Context) -> tuple[jax.Array, jax.Array]:
    """FlagEmbedding's ``kl_div`` distillation over each query's group: ``-sum_k t_k log s_k`` with
    ``t = softmax(teacher / teacher_temperature)`` and ``s = softmax(cos / temperature)`` (the cross-entropy
    to the teacher's distribution: the KL divergence plus the teacher's entropy, a constant).
    Returns (per-query values, valid weights)."""
    teacher, valid = _teacher(ctx)
    targets = jax.nn.softmax(teacher / ctx.spec.teacher_temperature, axis=-1)
    log_student = jax.nn.log_softmax(_group_cosines(ctx) / ctx.spec.temperature, axis=-1)
    return -jnp.sum(targets * log_student, axis=-1) * valid, valid


def margin_mse_per_query(ctx: _Context) -> tuple[jax.Array, jax.Array]:
    """sentence-transformers' MarginMSELoss: the mean over a query's negatives k of
    ``((s_pos - s_neg_k) - (t_pos - t_neg_k))^2`` with student scores s = cosines (the dot product of
    normalized embeddings, no temperature) and teacher scores t. Needs G >= 2.
    Returns (per-query sums over negatives, valid weights times G - 1)."""
    if ctx.group < 2:
        raise ValueError("loss: margin_mse needs hard negatives (group size >= 2)")
    teacher, valid = _teacher(ctx)
    student = _group_cosines(ctx)
    err = (student[:, :1] - student[:, 1:]) - (teacher[:, :1] - teacher[:, 1:])
    return jnp.sum(err * err, axis=-1) * valid, valid * (ctx.group - 1)


def _info_nce_sum(ctx: _Context) -> tuple[jax.Array, jax.Array]:
    per_query = info_nce_terms(ctx)
    return per_query, jnp.ones_like(per_query)


# The loss registry: name -> term(ctx) -> (per-query contributions [B], per-query counts [B]); the term's
# value is the global sum of contributions over the global sum of counts (a mean over the global batch).
# Adding a term = one function, one entry here, and a `<name>_weight` field in LossSpec and in
# configs/common.py's loss section (config_validation checks every `<name>_weight`).
LOSS_TERMS: dict[str, Callable[[_Context], tuple[jax.Array, jax.Array]]] = {
    "info_nce": _info_nce_sum,
    "kd": kd_per_query,
    "margin_mse": margin_mse_per_query,
}
TEACHER_TERMS = ("kd", "margin_mse")  # terms that read the data's teacher scores (pos_scores / neg_scores)


def loss_weight_keys() -> tuple[str, ...]:
    """The config.loss / LossSpec weight keys, one per registered term ("info_nce_weight", ...)."""
    return tuple(f"{name}_weight" for name in LOSS_TERMS)


def _global_mean(values: jax.Array, counts: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    total, count = jnp.sum(values), jnp.sum(counts)
    if axes:
        total, count = lax.psum(total, axes), lax.psum(count, axes)
    return total / jnp.maximum(count, 1e-12)


def loss_terms(
    q: jax.Array, p: jax.Array, spec: LossSpec, inputs: LossInputs = LossInputs(), axis_name: AxisName = None
) -> dict[str, jax.Array]:
    """Each active term's value (global mean), and ``"loss"`` = their weighted sum (Matryoshka summed
    over widths; per-width values are keyed ``"<term>@<dim>"`` when Matryoshka is on)."""
    axes = _axis_tuple(axis_name)
    out: dict[str, jax.Array] = {}
    total = jnp.zeros((), jnp.float32)
    dims = spec.dims_and_weights(q.shape[-1])
    for dim, dim_weight in dims:
        ctx = _context(q[:, :dim], p[:, :dim], spec, inputs, axes)
        for name, weight in spec.term_weights().items():
            if not weight:
                continue
            value = _global_mean(*LOSS_TERMS[name](ctx), axes)
            out[name if not spec.matryoshka_dims else f"{name}@{dim}"] = value
            total = total + dim_weight * weight * value
    out["loss"] = total
    return out


def combined_loss(
    q: jax.Array, p: jax.Array, spec: LossSpec, inputs: LossInputs = LossInputs(), axis_name: AxisName = None
) -> jax.Array:
    """The training loss (a scalar, identical on every device of ``axis_name``); see :func:`loss_terms`."""
    return loss_terms(q, p, spec, inputs, axis_name)["loss"]


def info_nce_per_query(
    q: jax.Array,
    p: jax.Array,
    temperature: float,
    in_batch_negatives: bool | jax.Array = True,
    axis_name: AxisName = None,
) -> jax.Array:
    """Per-query InfoNCE losses ``[B_local]`` (see the module docstring for layout and semantics).

    ``in_batch_negatives`` is a Python bool, a scalar bool array or a per-query ``[B]`` bool array
    (traced values are fine: the mode is applied by masking, so one compiled step serves both).
    """
    spec = LossSpec(temperature=temperature, mask_duplicates=False)
    ctx = _context(q, p, spec, LossInputs(in_batch_negatives=in_batch_negatives), _axis_tuple(axis_name))
    return info_nce_terms(ctx)


def info_nce(
    q: jax.Array,
    p: jax.Array,
    temperature: float,
    in_batch_negatives: bool | jax.Array = True,
    axis_name: AxisName = None,
) -> jax.Array:
    """Mean InfoNCE loss over the global batch (a scalar, identical on every device of ``axis_name``)."""
    per_query = info_nce_per_query(q, p, temperature, in_batch_negatives, axis_name)
    return _global_mean(per_query, jnp.ones_like(per_query), _axis_tuple(axis_name))


def parse_int_list(text: str, key: str) -> tuple[int, ...]:
    """"384,256,128" -> (384, 256, 128); errors name ``key``."""
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected comma-separated integers") from None


def parse_float_list(text: str, key: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected comma-separated numbers") from None


def loss_spec_from_config(loss: Mapping[str, Any], temperature: float) -> LossSpec:
    """A LossSpec from the config's ``loss`` section (configs/common.py) and ``train.temperature``."""
    margin = float(loss["fake_negative_margin"]) if loss["fake_negative_mask"] else None
    return LossSpec(
        temperature=float(temperature),
        **{key: float(loss[key]) for key in loss_weight_keys()},
        teacher_temperature=float(loss["teacher_temperature"]),
        matryoshka_dims=parse_int_list(loss["matryoshka_dims"], "config.loss.matryoshka_dims"),
        matryoshka_weights=parse_float_list(loss["matryoshka_weights"], "config.loss.matryoshka_weights"),
        fake_negative_margin=margin,
        query_query=bool(loss["query_query"]),
        passage_passage=bool(loss["passage_passage"]),
        passage_query=bool(loss["passage_query"]),
        mask_duplicates=bool(loss["mask_duplicates"]),
    )


def run_loss_spec(loss: Mapping[str, Any], temperature: float, embedding_dim: int, datasets: Sequence[Any]) -> LossSpec:
    """The LossSpec of a training run, checked against the model and the data before any step:
    Matryoshka widths within the embedding width, teacher scores present when a distillation term is on.
    Errors (ValueError) name the config key."""
    spec = loss_spec_from_config(loss, temperature)
    too_wide = [d for d in spec.matryoshka_dims if d > embedding_dim]
    if too_wide:
        raise ValueError(f"config.loss.matryoshka_dims={loss['matryoshka_dims']!r}: {too_wide} exceed the model's "
                         f"embedding width {embedding_dim}")
    if spec.needs_teacher_scores and not any(e.pos_scores for d in datasets for e in d.examples):
        key = next(f"{name}_weight" for name in TEACHER_TERMS if spec.term_weights()[name])
        raise ValueError(f"config.loss.{key}={loss[key]} needs teacher scores, but no training example has "
                         f"pos_scores / neg_scores (write them with python -m boom_jax.score)")
    return spec
