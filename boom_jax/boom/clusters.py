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

import dataclasses
import itertools
import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from scipy.cluster.hierarchy import dendrogram, fcluster, linkage
from scipy.spatial.distance import squareform

from boom_jax.atomic_io import atomic_write, write_json
from boom_jax.boom.heldout import DevSplit, dev_loss, dev_split, model_dev_loss
from boom_jax.boom.merge_config import merge_spec
from boom_jax.boom.provenance import member_entry, write_merged_card
from boom_jax.boom.workflow import (PLAIN_RUN, ensure_trained, evaluate, log, markdown_table, merge_and_export,
                                    run_config, write_summary)
from boom_jax.data.records import TrainDataset
from boom_jax.errors import ConfigError
from boom_jax.training.model_setup import load_model_for_training
from boom_jax.training.train_data import load_train_datasets
from boom_jax.training.workdir_lock import holds_workdir_lock

PROBE_RECORD = "probe.json"
CLUSTER_RECORD = "cluster.json"
LINKAGE_METHODS = ("average", "single", "complete", "weighted")  # valid on any (non-Euclidean) distance
DISTANCE_EPS = 1e-6

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
    m = np.asarray(matrix, np.float64)
    if len(m) < 2:
        return np.zeros(0, np.float64)
    off = m[~np.eye(len(m), dtype=bool)]
    d = m - off.min() + eps
    np.fill_diagonal(d, 0.0)
    return squareform(d, checks=False)


def cluster_linkage(names: Sequence[str], matrix: np.ndarray, method: str = "average") -> np.ndarray:
    """scipy's linkage matrix Z [n - 1, 4] of the datasets (heights in shifted distance units)."""
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
    """The checked cluster section; ConfigError names the offending config.cluster key."""
    if "cluster" not in config:
        raise ConfigError("the config has no `cluster` section (see configs/cluster_merge.py)")
    c = config.cluster
    if c.probe_steps < 1:
        raise ConfigError(f"config.cluster.probe_steps={c.probe_steps} must be >= 1")
    if c.pair_steps < 0:
        raise ConfigError(f"config.cluster.pair_steps={c.pair_steps} must be >= 0 (0 = 2 x probe_steps)")
    batch = c.dev_batch_size or config.train.batch_size
    if batch < 1 or c.dev_examples < batch:
        raise ConfigError(f"config.cluster.dev_examples={c.dev_examples} must hold at least one dev batch "
                                 f"of {batch} (config.cluster.dev_batch_size, 0 = train.batch_size)")
    if c.num_clusters < 0:
        raise ConfigError(f"config.cluster.num_clusters={c.num_clusters} must be >= 1 (or 0 = use threshold)")
    if c.linkage not in LINKAGE_METHODS:
        raise ConfigError(f"config.cluster.linkage={c.linkage!r}: expected one of {LINKAGE_METHODS}")
    merge_spec(config)  # config.merge: method, parameters, base (the count once the clusters are known)
    return ClusterSettings(
        probe_steps=int(c.probe_steps), pair_steps=int(c.pair_steps or 2 * c.probe_steps),
        dev_examples=int(c.dev_examples), dev_batch_size=int(batch), seed=int(c.seed),
        num_clusters=int(c.num_clusters) if c.num_clusters > 0 else None,
        threshold=None if c.num_clusters > 0 else float(c.threshold), linkage=str(c.linkage),
        merge_method=str(config.merge.method), evaluate=bool(c.evaluate), eval_tasks=str(c.eval_tasks))


def train_on(config: ml_collections.ConfigDict, run_dir: str, label: str, names: Sequence[str],
             steps: int | None, split: DevSplit, datasets: Sequence[TrainDataset], dev_batch_size: int,
             record_file: str) -> dict:
    """Trains (resumes, or skips when its record exists) one model on `names`' training slices (plain
    BLS, `steps` or config.train's), then scores it on their dev slices (record["dev_loss"])."""
    by_name = {d.name: d for d in datasets}
    dev_sets = split.dev_datasets([by_name[n] for n in names])

    def check(record: dict) -> None:
        if record["datasets"] != list(names) or (steps is not None and record["steps"] != steps):
            raise ConfigError(
                f"{run_dir} holds a finished run on {record['datasets']} ({record['steps']} steps) but this config "
                f"asks for {list(names)} ({steps if steps is not None else 'config.train'} steps); "
                f"use a new workdir or remove that folder")

    updates = {"data.schedule": "bls", **PLAIN_RUN, **({} if steps is None else {"train.max_steps": int(steps)})}
    return ensure_trained(
        run_config(config, label, updates, drop=("cluster",)), run_dir, [by_name[n] for n in names],
        record_file=record_file, tag="cluster", label=label,
        detail=f" on {', '.join(names)}" + (f" ({steps} steps)" if steps is not None else ""),
        subset=split.train_manifest(names), fields={"name": label, "datasets": list(names)}, check=check,
        after=lambda model: {"dev_loss": model_dev_loss(config, model, dev_sets, dev_batch_size)})


def run_probes(config: ml_collections.ConfigDict, workdir: str, datasets: Sequence[TrainDataset],
               split: DevSplit, settings: ClusterSettings) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every single-dataset probe and every pair probe: ({dataset: record}, {"a+b": record})."""
    def probe(name: str, names: Sequence[str], steps: int) -> dict:
        return train_on(config, os.path.join(workdir, "probes", name), f"probe {name}", names, steps, split,
                        datasets, settings.dev_batch_size, PROBE_RECORD)

    singles = {d.name: probe(d.name, [d.name], settings.probe_steps) for d in datasets}
    pairs = {pair_name(a, b): probe(pair_name(a, b), [a, b], settings.pair_steps)
             for a, b in itertools.combinations([d.name for d in datasets], 2)}
    return singles, pairs


def plot_interactions(names: Sequence[str], matrix: np.ndarray, z: np.ndarray, path: str) -> None:
    """DIR/interaction.png: dendrogram beside the interaction heatmap (rows in dendrogram order)."""
    import matplotlib  # lazy: matplotlib (pyplot above all) is slow to import and only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def summary_lines(report: dict) -> list[str]:
    """DIR/summary.md: the clusters, the interaction matrix and every model's dev losses."""
    names = report["datasets"]
    lines = ["# Cluster-level merging", "",
             f"{len(names)} datasets, dev slices of {report['dev']['examples']} held-out examples each; "
             f"probes of {report['probe_steps']} steps (pairs {report['pair_steps']}); linkage "
             f"{report['linkage_method']}; merge {report['merge_method']}.", "", "## Clusters", ""]
    lines += [f"- c{k}: {', '.join(group)}" for k, group in enumerate(report["clusters"])]
    lines += ["", "## Interaction (joint minus separate dev loss; negative = they help each other)", ""]
    lines += markdown_table(["", *names], [[name, *(f"{v:+.4f}" for v in row)]
                                           for name, row in zip(names, report["interaction"])])
    lines += ["", "## Dev loss (InfoNCE on the held-out slices)", ""]
    rows = []
    for label, losses in report["dev_loss"].items():
        values = [losses.get(n) for n in names]
        rows.append([label, *("-" if v is None else f"{v:.4f}" for v in values),
                     f"{np.mean([v for v in values if v is not None]):.4f}"])
    return lines + markdown_table(["model", *names, "mean"], rows)


def _write_card(config: ml_collections.ConfigDict, workdir: str, records: Sequence[dict], clusters: list,
                datasets: Sequence[TrainDataset], results: dict | None, merge_time: float) -> None:
    """DIR/export's README.md and boom.json: one member per cluster (its datasets), the merge, dev scores."""
    members = []
    for k, (record, group) in enumerate(zip(records, clusters)):
        entry = member_entry(record, os.path.join(workdir, "clusters", f"c{k}"), workdir, results)
        entry["datasets"] = list(group)
        members.append(entry)
    write_merged_card(config, "cluster", workdir, datasets, members, {"method": config.merge.method}, results=results,
                      wall_time_s=sum(float(r.get("wall_time_s", 0.0)) for r in records) + merge_time)


@holds_workdir_lock  # one run of this workflow per workdir
def run_cluster_merge(config: ml_collections.ConfigDict, workdir: str,
                      datasets: Sequence[TrainDataset] | None = None) -> dict:
    """Probes, interactions, clusters, one model per cluster, merged and exported; returns the report
    written to DIR/clusters.json. Re-running skips finished probes and cluster models."""
    settings = cluster_settings(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if datasets is None:
        datasets = load_train_datasets(config)
    names = [d.name for d in datasets]
    if settings.num_clusters is not None and settings.num_clusters > len(names):
        raise ConfigError(f"config.cluster.num_clusters={settings.num_clusters} exceeds the "
                          f"{len(names)} datasets {names}")
    split = dev_split(datasets, settings.dev_examples, settings.seed, min_train=int(config.train.batch_size))

    singles, pairs = run_probes(config, workdir, datasets, split, settings)
    separate = {n: singles[n]["dev_loss"][n] for n in names}
    joint = {(a, b): pairs[pair_name(a, b)]["dev_loss"] for a, b in itertools.combinations(names, 2)}
    names, matrix = interaction_matrix(separate, joint)
    z = cluster_linkage(names, matrix, settings.linkage)
    clusters = cluster_datasets(names, matrix, settings.num_clusters, settings.threshold, settings.linkage)
    log("cluster", "clusters: " + "; ".join(", ".join(g) for g in clusters))
    records = [train_on(config, os.path.join(workdir, "clusters", f"c{k}"), f"c{k}", group, None, split, datasets,
                        settings.dev_batch_size, CLUSTER_RECORD) for k, group in enumerate(clusters)]

    merged = os.path.join(workdir, "merged")
    log("cluster", f"merging {len(records)} cluster models ({settings.merge_method})")
    merge_time = merge_and_export(config, merge_spec(config, len(records)), {r["name"]: r["model"] for r in records},
                                  merged, workdir, tag="cluster", export=os.path.join(workdir, "export"))["wall_time_s"]

    all_dev = split.dev_datasets(datasets)
    cfg, params, tokenizer_dir = load_model_for_training(config, jax.random.PRNGKey(config.seed))
    dev_losses = {"base": dev_loss(config, cfg, jax.device_get(params), tokenizer_dir, all_dev,
                                   settings.dev_batch_size)}
    del params
    dev_losses.update({r["name"]: r["dev_loss"] for r in records})
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
        models = {**{r["name"]: r["model"] for r in records}, "merged": merged}
        report["scores"] = evaluate(config, models, os.path.join(workdir, "eval"), settings.eval_tasks)
    _write_card(config, workdir, records, clusters, datasets, report.get("scores"), merge_time)
    write_json(os.path.join(workdir, "clusters.json"), report)
    plot_interactions(names, matrix, z, os.path.join(workdir, "interaction.png"))
    write_summary(workdir, "cluster", summary_lines(report))
    return report
