"""Training-data sources: JSONL files, folders and globs, and Hugging Face `datasets`, into TrainDatasets.

Every source is read record by record through `validation.validate_record`, so all of them share the
standard line format, the error messages (file, line, field) and the skip-and-count option. Settings
come per dataset, as one dict each in the config (see `DatasetSpec`).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from boom_jax.data.records import Example, TrainDataset
from boom_jax.data.validation import (
    ON_ERROR_MODES,
    DataError,
    DuplicateFilter,
    LoadReport,
    check_on_error,
    decode_json_line,
    validate_record,
)

# config.data.source: the built-in corpus (boom_jax/data/builtin.py) or config.data.datasets' files.
DATA_SOURCES = ("builtin", "files")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
HF_FILE_SUFFIXES = (".parquet", ".json", ".json.gz", ".arrow")
NO_IN_BATCH_NEGATIVES_TYPES = ("classification", "clustering")
SOURCE_FORMATS = ("auto", "jsonl", "hf")
HUB_PREFIX = "hf:"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """The settings of one training dataset, as given in the config.

    path: a JSONL file, folder or glob (.jsonl / .jsonl.gz), or a Hugging Face dataset: a local folder
      written by `save_to_disk`, a local folder of JSON/parquet files, or a hub dataset written
      "hf:owner/repo" or "hf:owner/repo/folder-or-file" (needs network).
    name: the dataset name; default the file name (a folder or glob without a name gives one dataset
      per file).
    task_type: default the records' "type" field, else "retrieval".
    in_batch_negatives: default off for classification and clustering, on otherwise.
    hard_negatives: negatives per group (group size = 1 + hard_negatives); None = the batcher's default.
    instruction: the query instruction, prepended to every query whose record has no "prompt".
    limit: keep at most this many examples (the first ones); None or 0 = all.
    on_error: "raise" | "skip" for this dataset's bad records; None = the caller's (config.data.on_error).
    columns: which columns hold the standard fields, {"query": COL, "pos": COL | [COL, ...],
      "neg": COL | [COL, ...], "prompt": COL, "type": COL}; None = the standard names, or
      sentence-transformers' layout (anchor / positive / negative, negative_1 ... negative_N) when a
      record has no "pos" (see `map_columns`).
    passage_prompt: text put before every passage of this dataset (E5-style "passage: "); "" = the
      model's own document prompt, if it has one.
    """

    path: str
    name: str | None = None
    format: str = "auto"
    split: str = "train"
    task_type: str | None = None
    in_batch_negatives: bool | None = None
    hard_negatives: int | None = None
    instruction: str = ""
    limit: int | None = None
    on_error: str | None = None
    columns: Mapping[str, Any] | None = None
    passage_prompt: str = ""

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], where: str = "dataset") -> "DatasetSpec":
        """Builds a spec from a config dict; `source` is accepted as an alias of `path`."""
        settings = dict(settings)
        if "source" in settings:
            if "path" in settings:
                raise ValueError(f"{where}: give either 'path' or 'source', not both")
            settings["path"] = settings.pop("source")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; expected some of {sorted(known)}")
        if "path" not in settings:
            raise ValueError(f"{where}: missing setting 'path' (a JSONL file/folder/glob or a dataset)")
        if hasattr(settings.get("columns"), "to_dict"):  # a ConfigDict from the training config
            settings["columns"] = settings["columns"].to_dict()
        spec = cls(**settings)
        spec.check(where)
        return spec

    def check(self, where: str = "dataset") -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"{where}.path: expected a non-empty string, got {self.path!r}")
        if self.format not in SOURCE_FORMATS:
            raise ValueError(f"{where}.format: expected one of {SOURCE_FORMATS}, got {self.format!r}")
        if self.hard_negatives is not None and (not isinstance(self.hard_negatives, int) or self.hard_negatives < 0):
            raise ValueError(f"{where}.hard_negatives: expected an int >= 0, got {self.hard_negatives!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise ValueError(f"{where}.limit: expected an int >= 0 (0 = all), got {self.limit!r}")
        if self.on_error is not None and self.on_error not in ON_ERROR_MODES:
            raise ValueError(f"{where}.on_error: expected one of {ON_ERROR_MODES}, got {self.on_error!r}")
        if self.columns is not None:
            check_columns(self.columns, f"{where}.columns")
        if not isinstance(self.passage_prompt, str):
            raise ValueError(f"{where}.passage_prompt: expected a string, got {self.passage_prompt!r}")


COLUMN_FIELDS = ("query", "pos", "neg", "prompt", "type")
LIST_FIELDS = ("pos", "neg")
ST_NEGATIVE = re.compile(r"^negative(?:_(\d+))?$")  # sentence-transformers' negative, negative_1, ...


def check_columns(columns: Any, where: str) -> None:
    """A `columns` setting: standard field -> column name (a list of names for pos / neg)."""
    if not isinstance(columns, Mapping):
        raise ValueError(f"{where}: expected a mapping field -> column, got {columns!r}")
    for field, value in columns.items():
        if field not in COLUMN_FIELDS:
            raise ValueError(f"{where}.{field}: unknown field; expected some of {COLUMN_FIELDS}")
        names = list(value) if isinstance(value, (list, tuple)) and field in LIST_FIELDS else [value]
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{where}.{field}: expected a column name" + (" or a list of names" if field in LIST_FIELDS
                             else "") + f", got {value!r}")


def _texts(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def map_columns(record: Any, columns: Mapping[str, Any] | None, location: str) -> Any:
    """`record` with the standard fields (query, pos, neg, prompt, type) taken from its columns.

    With `columns`, each field comes from the named column(s) (pos / neg: one column or several, each a
    text or a list of texts); a missing column is a DataError naming it. Without, a record that has no
    "pos" but sentence-transformers' columns is read as anchor (or query) -> query, positive -> pos and
    negative, negative_1 ... negative_N (in that order) -> neg. Other records are returned as they are.
    """
    if not isinstance(record, dict):
        return record
    if columns:
        out = dict(record)
        for field, value in columns.items():
            names = list(value) if isinstance(value, (list, tuple)) else [value]
            missing = [n for n in names if n not in record]
            if missing:
                raise DataError(location, f"column {missing[0]!r} (the dataset's columns.{field}) is missing; the "
                                f"record has {sorted(record)}", f"column {missing[0]!r}", field)
            if field in LIST_FIELDS:
                out[field] = [t for n in names for t in _texts(record[n])]
            else:
                out[field] = record[names[0]]
        return out
    if "pos" in record or "positive" not in record or not ("anchor" in record or "query" in record):
        return record
    out = {k: v for k, v in record.items() if k not in ("anchor", "positive") and not ST_NEGATIVE.match(k)}
    out["query"] = record["anchor"] if "anchor" in record else record["query"]
    out["pos"] = _texts(record["positive"])
    negatives = sorted((int(m.group(1) or 0), k) for k in record if (m := ST_NEGATIVE.match(k)))
    out["neg"] = [t for _, k in negatives for t in _texts(record[k])]
    return out


def parse_dataset_specs(config: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]]) -> list[DatasetSpec]:
    """Specs from the config: a dict name -> settings, or a list of settings dicts."""
    if isinstance(config, Mapping):
        specs = []
        for name, settings in config.items():
            settings = dict(settings)
            settings.setdefault("name", name)
            specs.append(DatasetSpec.from_dict(settings, where=f"datasets.{name}"))
        return specs
    return [DatasetSpec.from_dict(s, where=f"datasets[{i}]") for i, s in enumerate(config)]


def default_in_batch_negatives(task_type: str) -> bool:
    """In-batch negatives are off for classification and clustering (their labels repeat across a batch)."""
    return task_type not in NO_IN_BATCH_NEGATIVES_TYPES


def dataset_name_from_file(path: str) -> str:
    base = os.path.basename(path)
    for suffix in sorted(JSONL_SUFFIXES + HF_FILE_SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def find_jsonl_files(path: str) -> list[str]:
    """The JSONL files of a file, folder (recursively) or glob, sorted; a missing path is a DataError."""
    if _is_glob(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if f.endswith(JSONL_SUFFIXES) and os.path.isfile(f))
        if not files:
            raise DataError(path, "no .jsonl or .jsonl.gz file matches this pattern", "missing file")
        return files
    if os.path.isdir(path):
        files = sorted(
            os.path.join(root, f) for root, _, names in os.walk(path) for f in names if f.endswith(JSONL_SUFFIXES)
        )
        if not files:
            raise DataError(path, "folder holds no .jsonl or .jsonl.gz file", "missing file")
        return files
    if not os.path.exists(path):
        raise DataError(path, "no such file or folder", "missing file")
    return [path]


def iter_jsonl_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of every non-blank line; .gz files are decompressed."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        handle = opener(path, "rb")
    except FileNotFoundError:
        raise DataError(path, "no such file", "missing file") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, raw


def kept_scores(texts: Sequence[str], kept: Sequence[str], scores: Sequence[float]) -> tuple[float, ...]:
    """The scores of the `kept` texts, an in-order subsequence of `texts` (duplicates dropped)."""
    if not scores:
        return ()
    out, k = [], 0
    for text, score in zip(texts, scores):
        if k < len(kept) and text == kept[k]:
            out.append(score)
            k += 1
    return tuple(out)


class _RecordReader:
    """Turns located raw records into Examples: validation, skip-and-count, duplicates, limit."""

    def __init__(self, name: str, spec: DatasetSpec, on_error: str, report: LoadReport):
        self.name = name
        self.spec = spec
        self.on_error = on_error
        self.report = report
        self.duplicates = DuplicateFilter(report)
        self.examples: list[Example] = []
        self.record_types: list[str] = []

    @property
    def full(self) -> bool:
        return bool(self.spec.limit) and len(self.examples) >= self.spec.limit

    def add(self, location: str, decode) -> None:
        try:
            record = validate_record(map_columns(decode(), self.spec.columns, location), location)
        except DataError as error:
            if self.on_error == "raise":
                raise
            self.report.record_skip(error)
            return
        pos = self.duplicates.keep_positives(record.query, record.pos)
        if not pos:
            return
        pos_scores = kept_scores(record.pos, pos, record.pos_scores)
        self.record_types.append(record.type)
        self.examples.append(
            Example(
                dataset=self.name,
                index=len(self.examples),
                query=record.query,
                pos=pos,
                neg=record.neg,
                prompt=record.prompt or self.spec.instruction,
                task_type=record.type,
                pos_scores=pos_scores,
                neg_scores=record.neg_scores,
            )
        )

    def finish(self) -> TrainDataset:
        task_type = self.spec.task_type or next((t for t in self.record_types if t), "") or "retrieval"
        examples = [
            e if e.task_type else dataclasses.replace(e, task_type=task_type) for e in self.examples
        ]
        self.report.loaded += len(examples)
        in_batch = self.spec.in_batch_negatives
        return TrainDataset(
            name=self.name,
            task_type=task_type,
            examples=examples,
            in_batch_negatives=default_in_batch_negatives(task_type) if in_batch is None else bool(in_batch),
            instruction=self.spec.instruction,
            hard_negatives=self.spec.hard_negatives,
            passage_prompt=self.spec.passage_prompt,
        )


def load_jsonl_dataset(
    files: Sequence[str], name: str, spec: DatasetSpec, on_error: str = "raise", report: LoadReport | None = None
) -> TrainDataset:
    """One TrainDataset from the given JSONL files (read in order)."""
    check_on_error(on_error)
    reader = _RecordReader(name, spec, on_error, report if report is not None else LoadReport())
    for path in files:
        for number, raw in iter_jsonl_lines(path):
            if reader.full:
                break
            location = f"{path}:{number}"
            reader.add(location, lambda raw=raw, location=location: decode_json_line(raw, location))
        if reader.full:
            break
    return reader.finish()


def _looks_like_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _hf_data_files(path: str) -> tuple[str, list[str]]:
    """(builder name, files) for a local folder of JSON or parquet files."""
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names)
    parquet = [f for f in files if f.endswith(".parquet")]
    if parquet:
        return "parquet", parquet
    json_files = [f for f in files if f.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz"))]
    if json_files:
        return "json", json_files
    raise DataError(path, "folder holds neither a saved dataset, nor .parquet / .json / .jsonl files", "missing file")


def open_hf_dataset(source: str, split: str = "train"):
    """A `datasets.Dataset`: a save_to_disk folder, a local JSON/parquet folder or file, or a hub name."""
    import datasets

    if source.startswith(HUB_PREFIX):
        return _open_hub_dataset(source, split)
    if os.path.isdir(source) and _looks_like_saved_dataset(source):
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(source, f"no split {split!r}; splits: {sorted(loaded)}", "missing split", "split")
            loaded = loaded[split]
        return loaded
    if os.path.isdir(source):
        builder, files = _hf_data_files(source)
        return datasets.load_dataset(builder, data_files={split: files}, split=split)
    if os.path.isfile(source):
        builder = "parquet" if source.endswith(".parquet") else "json"
        return datasets.load_dataset(builder, data_files={split: [source]}, split=split)
    parent = os.path.dirname(source)
    if source.endswith(JSONL_SUFFIXES + HF_FILE_SUFFIXES) or source.startswith((".", "/", "~")) or (
            parent and os.path.isdir(parent)):
        raise DataError(source, "no such file or folder", "missing file")
    return _open_hub_dataset(source, split)


def _open_hub_dataset(source: str, split: str):
    """A hub dataset: "hf:owner/repo" (or a bare "owner/repo"), optionally "/folder" or "/file.jsonl" inside."""
    import datasets

    parts = source[len(HUB_PREFIX):].split("/", 2) if source.startswith(HUB_PREFIX) else source.split("/", 2)
    repo = "/".join(parts[:2])
    inner = parts[2] if len(parts) > 2 else ""
    kwargs = {}
    if inner:
        kwargs = {"data_files": {split: inner}} if "." in os.path.basename(inner) else {"data_dir": inner}
    try:
        return datasets.load_dataset(repo, split=split, **kwargs)
    except Exception as e:  # e.g. no network: say what was tried
        raise DataError(source, f"could not load Hugging Face dataset {repo!r} {kwargs or ''} (split {split!r}): "
                        f"{type(e).__name__}: {e}", "missing file") from e


def load_hf_dataset(
    source: str, name: str, spec: DatasetSpec, on_error: str = "raise", report: LoadReport | None = None
) -> TrainDataset:
    """One TrainDataset from a Hugging Face dataset whose columns follow the standard line format."""
    check_on_error(on_error)
    table = open_hf_dataset(source, spec.split)
    reader = _RecordReader(name, spec, on_error, report if report is not None else LoadReport())
    for number, row in enumerate(table, start=1):
        if reader.full:
            break
        reader.add(f"{source}[{spec.split}]:row {number}", lambda row=row: row)
    return reader.finish()


def _resolve_format(spec: DatasetSpec) -> str:
    if spec.format != "auto":
        return spec.format
    path = spec.path
    if path.startswith(HUB_PREFIX):
        return "hf"
    if _is_glob(path):
        return "jsonl"
    if os.path.isfile(path):
        return "jsonl" if path.endswith(JSONL_SUFFIXES) else "hf"
    if os.path.isdir(path):
        if _looks_like_saved_dataset(path):
            return "hf"
        has_jsonl = any(f.endswith(JSONL_SUFFIXES) for _, _, names in os.walk(path) for f in names)
        return "jsonl" if has_jsonl else "hf"
    if path.endswith(JSONL_SUFFIXES):
        raise DataError(path, "no such file", "missing file")
    return "hf"


def load_dataset_spec(spec: DatasetSpec, on_error: str = "raise", report: LoadReport | None = None) -> list[TrainDataset]:
    """The TrainDataset(s) of one spec: one per file for an unnamed JSONL folder or glob, else one."""
    check_on_error(on_error)
    spec.check()
    on_error = spec.on_error or on_error  # the dataset's own setting wins
    report = report if report is not None else LoadReport()
    if _resolve_format(spec) == "hf":
        name = spec.name or dataset_name_from_file(spec.path.rstrip("/").split(":")[-1])
        return [load_hf_dataset(spec.path, name, spec, on_error, report)]
    files = find_jsonl_files(spec.path)
    if spec.name is None and len(files) > 1:
        return [load_jsonl_dataset([f], dataset_name_from_file(f), spec, on_error, report) for f in files]
    return [load_jsonl_dataset(files, spec.name or dataset_name_from_file(files[0]), spec, on_error, report)]


def load_datasets(
    specs: Iterable[DatasetSpec | Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    on_error: str = "raise",
    report: LoadReport | None = None,
) -> list[TrainDataset]:
    """All datasets of a config (dict name -> settings, or a list of specs/dicts); names must be unique.

    on_error="raise" (default) stops at the first bad record; "skip" drops it and counts it in `report`
    (print `report.summary()`).
    """
    if isinstance(specs, Mapping):
        specs = parse_dataset_specs(specs)
    else:
        specs = [s if isinstance(s, DatasetSpec) else DatasetSpec.from_dict(s, where=f"datasets[{i}]")
                 for i, s in enumerate(specs)]
    datasets: list[TrainDataset] = []
    for spec in specs:
        datasets.extend(load_dataset_spec(spec, on_error, report))
    check_unique_names(datasets)
    return datasets


def check_unique_names(datasets: Sequence[TrainDataset]) -> None:
    seen: set[str] = set()
    for d in datasets:
        if d.name in seen:
            raise ValueError(f"two training datasets are named {d.name!r}; give each a distinct 'name'")
        seen.add(d.name)
