"""Cluster-level merging: datasets grouped by how they interact, one model per group, merged.

How two datasets interact is measured with short *probe* runs from the base model: one per dataset
and one per pair, each scored by its InfoNCE loss on held-out dev slices (examples no probe trains
on). The interaction of a and b is the mean over X in {a, b} of

    loss on X of the model trained on a + b jointly  -  loss on X of the model trained on X alone

(negative = the two help each other). Datasets are then grouped by hierarchical clustering of those
interactions (scipy), one model is trained per group (batch-level shuffling on the group's data) and
the group models are merged (Multi-SLERP by default).

Layout of a cluster workdir (resumable; re-running skips what is finished):

    DIR/probes/<name>/              one short train workdir per dataset and per pair ("a+b")
    DIR/probes/<name>/probe.json    written when the probe finished: steps, dev losses
    DIR/clusters/c<k>/              one train workdir per cluster; cluster.json when finished
    DIR/merged/, DIR/export/        the merged model folder and its sentence-transformers export
    DIR/clusters.json               dev split, losses, interaction matrix, linkage, clusters
    DIR/interaction.png             heatmap of the interactions beside the dendrogram
    DIR/summary.md                  the clusters and the dev losses of base, cluster models and merged
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from boom_jax.atomic_io import write_json
from boom_jax.boom.merge_config import merge, merge_spec
from boom_jax.data.records import TrainDataset
from boom_jax.training.workdir_lock import holds_workdir_lock
from boom_jax.data.sampling import SubsetManifest, dataset_rng

PROBE_RECORD = "probe.json"
CLUSTER_RECORD = "cluster.json"
LINKAGE_METHODS = ("average", "single", "complete", "weighted")  # valid on any (non-Euclidean) distance
DISTANCE_EPS = 1e-6


class ClusterConfigError(ValueError):
    """A cluster section (or a cluster workdir) that cannot run; the message names the key."""


# ---------------------------------------------------------------------------------------------------
# Interactions and clustering (pure NumPy / scipy)


def pair_name(a: str, b: str) -> str:
    """The probe name of the pair (a, b): 'a+b'."""
    return f"{a}+{b}"


def interaction_matrix(separate: Mapping[str, float],
                       joint: Mapping[tuple[str, str], Mapping[str, float]]) -> tuple[list[str], np.ndarray]:
    """(names, matrix [n, n]) of pairwise interactions, names in the order of `separate`.

    separate[X]: dev loss on X of the model trained on X alone; joint[(a, b)][X] for X in {a, b}: dev
    loss on X of the model trained on a and b jointly (the key may be (a, b) or (b, a)). Entry (a, b) =
    mean over X in {a, b} of joint - separate; symmetric, zero diagonal; negative = they help each other.
    """
    names = list(separate)
    by_pair = {frozenset(k): v for k, v in joint.items()}
    n = len(names)
    matrix = np.zeros((n, n), np.float64)
    for i, j in itertools.combinations(range(n), 2):
        a, b = names[i], names[j]
        losses = by_pair.get(frozenset((a, b)))
        if losses is None:
            raise ValueError(f"interaction_matrix: no joint losses for the pair ({a!r}, {b!r})")
        missing = [x for x in (a, b) if x not in losses]
        if missing:
            raise ValueError(f"interaction_matrix: the joint losses of ({a!r}, {b!r}) lack {missing}")
        value = 0.5 * ((float(losses[a]) - float(separate[a])) + (float(losses[b]) - float(separate[b])))
        if not np.isfinite(value):
            raise ValueError(f"interaction_matrix: the interaction of ({a!r}, {b!r}) is not finite ({value})")
        matrix[i, j] = matrix[j, i] = value
    return names, matrix


def _check_matrix(names: Sequence[str], matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(names):
        raise ValueError(f"interaction matrix of shape {m.shape} does not match {len(names)} names")
    if not np.isfinite(m).all():
        raise ValueError("interaction matrix has non-finite entries")
    if not np.allclose(m, m.T, rtol=0, atol=1e-9):
        raise ValueError("interaction matrix is not symmetric")
    return m


def interaction_distance(matrix: np.ndarray, eps: float = DISTANCE_EPS) -> np.ndarray:
    """Condensed distances (scipy's squareform) from interactions: interaction - min off-diagonal + eps,
    so the pair that helps each other most is closest and every distance is positive."""
    from scipy.spatial.distance import squareform

    m = np.asarray(matrix, np.float64)
    if len(m) < 2:
        return np.zeros(0, np.float64)
    off = m[~np.eye(len(m), dtype=bool)]
    d = m - off.min() + eps
    np.fill_diagonal(d, 0.0)
    return squareform(d, checks=False)


def cluster_linkage(names: Sequence[str], matrix: np.ndarray, method: str = "average") -> np.ndarray:
    """scipy's linkage matrix Z [n - 1, 4] of the datasets (heights in shifted distance units)."""
    from scipy.cluster.hierarchy import linkage

    if method not in LINKAGE_METHODS:
        raise ValueError(f"linkage method {method!r}: expected one of {LINKAGE_METHODS} "
                         f"(centroid, median and ward need Euclidean distances)")
    m = _check_matrix(names, matrix)
    if len(names) < 2:
        return np.zeros((0, 4), np.float64)
    return linkage(interaction_distance(m), method=method)


def cluster_datasets(names: Sequence[str], matrix: np.ndarray, num_clusters: int | None = None,
                     threshold: float | None = None, method: str = "average") -> list[list[str]]:
    """Groups of datasets by hierarchical clustering of their interactions.

    `num_clusters`: at most that many groups (scipy's maxclust). `threshold` (interaction units):
    groups are joined while their linkage interaction is <= threshold. Exactly one of the two.
    Deterministic order: names in input order within a group, groups by their first name's position.
    """
    from scipy.cluster.hierarchy import fcluster

    if (num_clusters is None) == (threshold is None):
        raise ValueError("cluster_datasets: give exactly one of num_clusters and threshold")
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"cluster_datasets: repeated dataset names {names}")
    if num_clusters is not None and not 1 <= num_clusters <= len(names):
        raise ValueError(f"cluster_datasets: num_clusters={num_clusters} must be in [1, {len(names)}]")
    z = cluster_linkage(names, matrix, method)
    if len(names) < 2:
        return [names]
    if num_clusters is not None:
        labels = fcluster(z, t=num_clusters, criterion="maxclust")
    else:
        m = np.asarray(matrix, np.float64)
        off_min = m[~np.eye(len(m), dtype=bool)].min()
        labels = fcluster(z, t=float(threshold) - off_min + DISTANCE_EPS, criterion="distance")
    groups: dict[int, list[str]] = {}
    for name, label in zip(names, labels):
        groups.setdefault(int(label), []).append(name)
    return sorted(groups.values(), key=lambda g: names.index(g[0]))


# ---------------------------------------------------------------------------------------------------
# Held-out dev slices


@dataclasses.dataclass(frozen=True)
class DevSplit:
    """Per dataset: the training indices (sorted) and the held-out dev indices (sorted)."""

    seed: int
    train: dict[str, list[int]]
    dev: dict[str, list[int]]
    sizes: dict[str, int]

    def train_manifest(self, names: Sequence[str]) -> SubsetManifest:
        """The subset manifest that restricts `names` to their training indices (for training.loop.train)."""
        indices = {n: list(self.train[n]) for n in names}
        total = sum(self.sizes[n] for n in names)
        return SubsetManifest(ratio=sum(len(v) for v in indices.values()) / max(total, 1), seed=self.seed,
                              mode="without_replacement", indices=indices, sizes={n: self.sizes[n] for n in names})

    def dev_datasets(self, datasets: Sequence[TrainDataset]) -> list[TrainDataset]:
        """Each dataset restricted to its dev slice."""
        return [dataclasses.replace(d, examples=[d.examples[i] for i in self.dev[d.name]]) for d in datasets]


def dev_split(datasets: Sequence[TrainDataset], dev_examples: int, seed: int, min_train: int = 1) -> DevSplit:
    """The last `dev_examples` examples of a seeded shuffle of each dataset are held out; the rest trains.

    Raises ClusterConfigError when a dataset keeps fewer than `min_train` training examples.
    """
    if dev_examples < 1:
        raise ClusterConfigError(f"config.cluster.dev_examples={dev_examples} must be >= 1")
    train, dev, sizes = {}, {}, {}
    for d in datasets:
        n = len(d.examples)
        if n - dev_examples < min_train:
            raise ClusterConfigError(
                f"dataset {d.name!r} has {n} examples: holding out config.cluster.dev_examples={dev_examples} "
                f"leaves fewer than {min_train} to train on (one batch); lower dev_examples or raise data.limit")
        order = dataset_rng(seed, "cluster_dev", d.name).permutation(n)
        train[d.name] = sorted(int(i) for i in order[:n - dev_examples])
        dev[d.name] = sorted(int(i) for i in order[n - dev_examples:])
        sizes[d.name] = n
    return DevSplit(seed=int(seed), train=train, dev=dev, sizes=sizes)


# ---------------------------------------------------------------------------------------------------
# Dev loss


def dev_loss(config: ml_collections.ConfigDict, cfg: Any, params: Any, tokenizer_dir: str,
             dev_sets: Sequence[TrainDataset], batch_size: int) -> dict[str, float]:
    """Eval-mode (no dropout) InfoNCE loss of a model on each dev set: {dataset: mean loss}.

    Batches are the training layout (Batcher, schedule "bls": one dataset per batch, [query, pos,
    negs] groups of config.data.train_group_size, each dataset's in_batch_negatives), drawn with a
    fixed seed so every model sees the same batches; padded to the max lengths (one shape per set).
    """
    import jax

    from boom_jax.data.batcher import Batcher
    from boom_jax.models.encoder import jitted_forward
    from boom_jax.tokenization import TextTokenizer, load_tokenizer
    from boom_jax.training.loop import apply_query_template
    from boom_jax.training.loss import info_nce

    tokenizer = load_tokenizer(tokenizer_dir)
    max_len = cfg.max_position_embeddings if cfg.arch == "bert" else 1 << 30
    q_len = min(config.data.query_max_len, max_len)
    p_len = min(config.data.passage_max_len, max_len)
    query_tok = TextTokenizer(tokenizer, q_len, cfg.padding_side, cfg.append_eos, buckets=(q_len,))
    passage_tok = TextTokenizer(tokenizer, p_len, cfg.padding_side, cfg.append_eos, buckets=(p_len,))
    forward = jitted_forward(cfg)
    params = jax.device_put(params, jax.devices()[0])
    out = {}
    for d in apply_query_template(dev_sets, config.model.query_prompt_template):
        batcher = Batcher([d], query_tok, passage_tok, batch_size, group_size=config.data.train_group_size,
                          schedule="bls", seed=config.seed, num_epochs=1, token_cache_size=0, show_progress=False)
        losses = []
        for batch in batcher:
            q = forward(params, batch["query_ids"], batch["query_mask"])
            p = forward(params, batch["passage_ids"], batch["passage_mask"])
            losses.append(float(info_nce(q, p, config.train.temperature, bool(batch["in_batch_negatives"]))))
        out[d.name] = float(np.mean(losses))
    return out


def model_dev_loss(config: ml_collections.ConfigDict, model_path: str, dev_sets: Sequence[TrainDataset],
                   batch_size: int) -> dict[str, float]:
    """dev_loss of a saved model (model folder, train workdir or HF folder)."""
    from boom_jax.model_io import load_model, tokenizer_dir_of

    cfg, params, tokenizer_dir = load_model(model_path)
    return dev_loss(config, cfg, params, tokenizer_dir or tokenizer_dir_of(model_path) or model_path,
                    dev_sets, batch_size)


# ---------------------------------------------------------------------------------------------------
# The workflow


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """config.cluster, checked."""

    probe_steps: int
    pair_steps: int
    dev_examples: int
    dev_batch_size: int
    seed: int
    num_clusters: int | None
    threshold: float | None
    linkage: str
    merge_method: str
    evaluate: bool
    eval_tasks: str


def cluster_settings(config: ml_collections.ConfigDict) -> ClusterSettings:
    """The checked cluster section; ClusterConfigError names the offending config.cluster key."""
    if "cluster" not in config:
        raise ClusterConfigError("the config has no `cluster` section (see configs/cluster_merge.py)")
    c = config.cluster
    if c.probe_steps < 1:
        raise ClusterConfigError(f"config.cluster.probe_steps={c.probe_steps} must be >= 1")
    if c.pair_steps < 0:
        raise ClusterConfigError(f"config.cluster.pair_steps={c.pair_steps} must be >= 0 (0 = 2 x probe_steps)")
    batch = c.dev_batch_size or config.train.batch_size
    if batch < 1 or c.dev_examples < batch:
        raise ClusterConfigError(f"config.cluster.dev_examples={c.dev_examples} must hold at least one dev batch "
                                 f"of {batch} (config.cluster.dev_batch_size, 0 = train.batch_size)")
    if c.num_clusters < 0:
        raise ClusterConfigError(f"config.cluster.num_clusters={c.num_clusters} must be >= 1 (or 0 = use threshold)")
    if c.linkage not in LINKAGE_METHODS:
        raise ClusterConfigError(f"config.cluster.linkage={c.linkage!r}: expected one of {LINKAGE_METHODS}")
    merge_spec(config)  # config.merge: method, parameters, base (the count once the clusters are known)
    return ClusterSettings(
        probe_steps=int(c.probe_steps), pair_steps=int(c.pair_steps or 2 * c.probe_steps),
        dev_examples=int(c.dev_examples), dev_batch_size=int(batch), seed=int(c.seed),
        num_clusters=int(c.num_clusters) if c.num_clusters > 0 else None,
        threshold=None if c.num_clusters > 0 else float(c.threshold), linkage=str(c.linkage),
        merge_method=str(config.merge.method), evaluate=bool(c.evaluate), eval_tasks=str(c.eval_tasks))


def run_config(config: ml_collections.ConfigDict, name: str, max_steps: int | None = None) -> ml_collections.ConfigDict:
    """A plain BLS training config for one probe or cluster model (no cluster section, no dev eval)."""
    c = copy.deepcopy(config)
    with c.unlocked():
        del c["cluster"]
        c.name = f"{config.name}/{name}"
        c.data.schedule = "bls"
        c.export.sentence_transformers = False
        c.eval.every_steps = 0
        c.eval.at_end = False
        if max_steps is not None:
            c.train.max_steps = int(max_steps)
    return c


def _train_record(config, run_dir: str, names: Sequence[str], steps: int | None, split: DevSplit,
                  by_name: Mapping[str, TrainDataset], dev_sets: Mapping[str, TrainDataset],
                  settings: ClusterSettings, record_file: str, label: str) -> dict:
    """Trains (resumes, or skips when its record exists) one model on `names`' training slices, then
    scores it on their dev slices; the record (steps, wall time, dev losses, model path) is written last."""
    from boom_jax.training.loop import train

    record = _read_json(os.path.join(run_dir, record_file))
    if record is not None:
        if record["datasets"] != list(names) or (steps is not None and record["steps"] != steps):
            raise ClusterConfigError(
                f"{run_dir} holds a finished run on {record['datasets']} ({record['steps']} steps) but this config "
                f"asks for {list(names)} ({steps if steps is not None else 'config.train'} steps); "
                f"use a new workdir or remove that folder")
        print(f"[cluster] {label} already finished ({record['steps']} steps); skipping")
        return record
    print(f"[cluster] training {label} on {', '.join(names)}"
          + (f" ({steps} steps)" if steps is not None else ""))
    start = time.time()
    result = train(run_config(config, label, steps), run_dir, datasets=[by_name[n] for n in names],
                   subset=split.train_manifest(names))
    if result.preempted:
        raise SystemExit(f"[cluster] {label} was preempted at step {result.steps}; re-run to resume")
    model = os.path.join(run_dir, "model")
    losses = model_dev_loss(config, model, [dev_sets[n] for n in names], settings.dev_batch_size)
    record = {"name": label, "datasets": list(names), "steps": int(result.steps),
              "examples": int(result.steps) * int(config.train.batch_size),
              "wall_time_s": round(time.time() - start, 2), "final_loss": float(result.final_loss),
              "dev_loss": losses, "model": model}
    write_json(os.path.join(run_dir, record_file), record)
    return record


def _read_json(path: str) -> Any | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_probes(config: ml_collections.ConfigDict, workdir: str, datasets: Sequence[TrainDataset],
               split: DevSplit, settings: ClusterSettings) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every single-dataset probe and every pair probe: ({dataset: record}, {"a+b": record})."""
    by_name = {d.name: d for d in datasets}
    dev_sets = {d.name: d for d in split.dev_datasets(datasets)}
    singles = {}
    for d in datasets:
        singles[d.name] = _train_record(config, os.path.join(workdir, "probes", d.name), [d.name],
                                        settings.probe_steps, split, by_name, dev_sets, settings, PROBE_RECORD,
                                        f"probe {d.name}")
    pairs = {}
    for a, b in itertools.combinations([d.name for d in datasets], 2):
        name = pair_name(a, b)
        pairs[name] = _train_record(config, os.path.join(workdir, "probes", name), [a, b], settings.pair_steps,
                                    split, by_name, dev_sets, settings, PROBE_RECORD, f"probe {name}")
    return singles, pairs


def plot_interactions(names: Sequence[str], matrix: np.ndarray, z: np.ndarray, path: str) -> None:
    """DIR/interaction.png: dendrogram beside the interaction heatmap (rows in dendrogram order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    n = len(names)
    fig, (ax_tree, ax_map) = plt.subplots(1, 2, figsize=(6 + 0.7 * n, 2.5 + 0.5 * n),
                                          gridspec_kw={"width_ratios": [1, 2]})
    order = list(range(n))
    if n >= 2:
        tree = dendrogram(z, orientation="left", labels=list(names), ax=ax_tree, no_labels=True)
        order = [names.index(label) for label in tree["ivl"]][::-1]  # heatmap rows top to bottom
        ax_tree.set_title("linkage", fontsize=9)
    else:
        ax_tree.axis("off")
    m = matrix[np.ix_(order, order)]
    lim = float(np.abs(m).max()) or 1.0
    image = ax_map.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax_map.set_xticks(range(n), [names[i] for i in order], rotation=60, ha="right")
    ax_map.set_yticks(range(n), [names[i] for i in order])
    for i in range(n):
        for j in range(n):
            ax_map.text(j, i, f"{m[i, j]:+.3f}", ha="center", va="center", fontsize=7)
    ax_map.set_title("interaction: joint - separate dev loss", fontsize=9)
    fig.colorbar(image, ax=ax_map, shrink=0.8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_summary(workdir: str, report: dict) -> None:
    """DIR/summary.md: the clusters, the interaction matrix and every model's dev losses."""
    names = report["datasets"]
    lines = ["# Cluster-level merging", "",
             f"{len(names)} datasets, dev slices of {report['dev']['examples']} held-out examples each; "
             f"probes of {report['probe_steps']} steps (pairs {report['pair_steps']}); linkage "
             f"{report['linkage_method']}; merge {report['merge_method']}.", "", "## Clusters", ""]
    for k, group in enumerate(report["clusters"]):
        lines.append(f"- c{k}: {', '.join(group)}")
    lines += ["", "## Interaction (joint minus separate dev loss; negative = they help each other)", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, row in zip(names, report["interaction"]):
        lines.append(f"| {name} | " + " | ".join(f"{v:+.4f}" for v in row) + " |")
    lines += ["", "## Dev loss (InfoNCE on the held-out slices)", "",
              "| model | " + " | ".join(names) + " | mean |", "|---|" + "---:|" * (len(names) + 1)]
    for label, losses in report["dev_loss"].items():
        values = [losses.get(n) for n in names]
        known = [v for v in values if v is not None]
        lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values)
                     + f" | {np.mean(known):.4f} |")
    tmp = os.path.join(workdir, "summary.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(workdir, "summary.md"))


def _write_card(config: ml_collections.ConfigDict, workdir: str, records: Sequence[dict], clusters: list,
                datasets: Sequence[TrainDataset], results: dict | None, merge_time: float) -> None:
    """DIR/export's README.md and boom.json: one member per cluster (its datasets), the merge, dev scores."""
    from boom_jax.boom.provenance import member_entry, merged_provenance, write_export_card
    from boom_jax.training.loop import resolve_model_path

    members = []
    for k, (record, group) in enumerate(zip(records, clusters)):
        entry = member_entry(record, os.path.join(workdir, "clusters", f"c{k}"), workdir, results)
        entry["datasets"] = list(group)
        members.append(entry)
    provenance = merged_provenance(
        config, "cluster", datasets, members, {"method": config.merge.method}, results=results,
        model_dir=resolve_model_path(config.model.path),
        wall_time_s=sum(float(r.get("wall_time_s", 0.0)) for r in records) + merge_time)
    write_export_card(os.path.join(workdir, "export"), provenance)


@holds_workdir_lock  # one run of this workflow per workdir
def run_cluster_merge(config: ml_collections.ConfigDict, workdir: str,
                      datasets: Sequence[TrainDataset] | None = None) -> dict:
    """Probes, interactions, clusters, one model per cluster, merged and exported; returns the report
    written to DIR/clusters.json. Re-running skips finished probes and cluster models."""
    from boom_jax.boom.bag import _export
    from boom_jax.training.loop import load_model_for_training, load_train_datasets, resolve_model_path

    import jax

    settings = cluster_settings(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if datasets is None:
        datasets = load_train_datasets(config)
    names = [d.name for d in datasets]
    if settings.num_clusters is not None and settings.num_clusters > len(names):
        raise ClusterConfigError(f"config.cluster.num_clusters={settings.num_clusters} exceeds the "
                                 f"{len(names)} datasets {names}")
    split = dev_split(datasets, settings.dev_examples, settings.seed, min_train=int(config.train.batch_size))

    singles, pairs = run_probes(config, workdir, datasets, split, settings)
    separate = {n: singles[n]["dev_loss"][n] for n in names}
    joint = {(a, b): pairs[pair_name(a, b)]["dev_loss"] for a, b in itertools.combinations(names, 2)}
    names, matrix = interaction_matrix(separate, joint)
    z = cluster_linkage(names, matrix, settings.linkage)
    clusters = cluster_datasets(names, matrix, settings.num_clusters, settings.threshold, settings.linkage)
    print("[cluster] clusters: " + "; ".join(", ".join(g) for g in clusters))

    by_name = {d.name: d for d in datasets}
    dev_sets = {d.name: d for d in split.dev_datasets(datasets)}
    records = [_train_record(config, os.path.join(workdir, "clusters", f"c{k}"), group, None, split, by_name,
                             dev_sets, settings, CLUSTER_RECORD, f"c{k}")
               for k, group in enumerate(clusters)]

    start = time.time()
    merged = os.path.join(workdir, "merged")
    print(f"[cluster] merging {len(records)} cluster models ({settings.merge_method})")
    merge(config, merge_spec(config, len(records)), [r["model"] for r in records], merged, workdir)
    _export(merged, os.path.join(workdir, "export"))
    merge_time = round(time.time() - start, 2)

    all_dev = [dev_sets[n] for n in names]
    cfg, params, tokenizer_dir = load_model_for_training(config, jax.random.PRNGKey(config.seed))
    dev_losses = {"base": dev_loss(config, cfg, jax.device_get(params), tokenizer_dir, all_dev,
                                   settings.dev_batch_size)}
    del params
    for r in records:
        dev_losses[r["name"]] = r["dev_loss"]
    dev_losses["merged"] = model_dev_loss(config, merged, all_dev, settings.dev_batch_size)

    report = {
        "datasets": names, "probe_steps": settings.probe_steps, "pair_steps": settings.pair_steps,
        "dev": {"seed": split.seed, "examples": settings.dev_examples, "batch_size": settings.dev_batch_size,
                "indices": split.dev},
        "separate": separate, "joint": {pair_name(a, b): v for (a, b), v in joint.items()},
        "interaction": matrix.tolist(), "linkage_method": settings.linkage, "linkage": z.tolist(),
        "distance": interaction_distance(matrix).tolist(), "num_clusters": settings.num_clusters,
        "threshold": settings.threshold, "clusters": clusters, "cluster_models": records,
        "merge_method": settings.merge_method, "merge_wall_time_s": merge_time, "merged": merged,
        "export": os.path.join(workdir, "export"), "dev_loss": dev_losses,
        "probe_wall_time_s": round(sum(r["wall_time_s"] for r in [*singles.values(), *pairs.values()]), 2),
    }
    if settings.evaluate:
        from boom_jax.evaluation.runner import evaluate_dev

        models = {} if config.model.random_init else {"base": resolve_model_path(config.model.path)}
        models.update({r["name"]: r["model"] for r in records})
        models["merged"] = merged
        report["scores"] = evaluate_dev(config, models, os.path.join(workdir, "eval"), settings.eval_tasks)
    _write_card(config, workdir, records, clusters, datasets, report.get("scores"), merge_time)
    write_json(os.path.join(workdir, "clusters.json"), report)
    plot_interactions(names, matrix, z, os.path.join(workdir, "interaction.png"))
    write_summary(workdir, report)
    with open(os.path.join(workdir, "summary.md")) as f:
        print(f.read())
    return report
