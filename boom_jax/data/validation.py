"""Validation of raw training records: clear errors naming file, line and field; skip-and-count mode.

A raw record is one JSON object in the standard line format
`{"query": str, "pos": [str, ...], "neg": [str, ...], "prompt": str, "type": str, "pos_scores": [float, ...],
"neg_scores": [float, ...]}` (neg, prompt, type and the teacher scores optional; other keys ignored). `validate_record` checks one record and returns its normalized fields;
`LoadReport` collects what skip mode dropped and why, and the exact duplicates removed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from typing import Any, Literal

OnError = Literal["raise", "skip"]
ON_ERROR_MODES = ("raise", "skip")


class DataError(ValueError):
    """A bad input record or file; the message starts with `location` (e.g. `data/x.jsonl:17`).

    `reason` is a short category used to count skipped records (e.g. "bad JSON", "field 'pos'").
    """

    def __init__(self, location: str, message: str, reason: str, field: str | None = None):
        self.location = location
        self.field = field
        self.reason = reason
        prefix = f"{location}: field {field!r}: " if field else f"{location}: "
        super().__init__(prefix + message)


@dataclasses.dataclass(frozen=True)
class ValidRecord:
    """The normalized fields of one valid record."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...]
    prompt: str
    type: str
    pos_scores: tuple[float, ...] = ()
    neg_scores: tuple[float, ...] = ()


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string_list(record: dict, field: str, location: str, required: bool) -> tuple[str, ...]:
    """Reads a list-of-strings field; a required one must hold at least one string."""
    want = "a non-empty list of strings" if required else "a list of strings"
    if field not in record or record[field] is None:
        if required:
            raise DataError(location, f"expected {want}, got nothing (missing)", f"field {field!r}", field)
        return ()
    value = record[field]
    if not isinstance(value, list):
        raise DataError(location, f"expected {want}, got {_type_name(value)}", f"field {field!r}", field)
    if required and not value:
        raise DataError(location, f"expected {want}, got an empty list", f"field {field!r}", field)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(location, f"expected {want}, got {_type_name(item)} at position {i}",
                            f"field {field!r}", field)
        if not item.strip():
            raise DataError(location, f"expected {want}, got an empty string at position {i}",
                            f"field {field!r}", field)
    return tuple(value)


def _optional_string(record: dict, field: str, location: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(location, f"expected a string, got {_type_name(value)}", f"field {field!r}", field)
    return value


def _score_list(record: dict, field: str, texts: tuple[str, ...], texts_field: str, location: str) -> tuple[float, ...]:
    """Reads an optional teacher-score field: finite numbers, one per entry of `texts_field`."""
    value = record.get(field)
    if value is None:
        return ()
    want = f"a list of {len(texts)} finite numbers (one per {texts_field!r} entry)"
    if not isinstance(value, list):
        raise DataError(location, f"expected {want}, got {_type_name(value)}", f"field {field!r}", field)
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise DataError(location, f"expected {want}, got {_type_name(item)} at position {i}",
                            f"field {field!r}", field)
        if not math.isfinite(item):
            raise DataError(location, f"expected {want}, got {item} at position {i}", f"field {field!r}", field)
    if len(value) != len(texts):
        raise DataError(location, f"expected {want}, got {len(value)}", f"field {field!r}", field)
    return tuple(float(v) for v in value)


def validate_record(record: Any, location: str) -> ValidRecord:
    """Checks one raw record (already JSON-decoded); raises `DataError` naming `location` and the field."""
    if not isinstance(record, dict):
        raise DataError(location, f"expected a JSON object, got {_type_name(record)}", "not an object")
    query = record.get("query")
    if query is None:
        raise DataError(location, "expected a non-empty string, got nothing (missing)", "field 'query'", "query")
    if not isinstance(query, str):
        raise DataError(location, f"expected a non-empty string, got {_type_name(query)}", "field 'query'", "query")
    if not query.strip():
        raise DataError(location, "expected a non-empty string, got an empty string", "field 'query'", "query")
    pos = _string_list(record, "pos", location, required=True)
    neg = _string_list(record, "neg", location, required=False)
    prompt = _optional_string(record, "prompt", location)
    task_type = _optional_string(record, "type", location)
    pos_scores = _score_list(record, "pos_scores", pos, "pos", location)
    neg_scores = _score_list(record, "neg_scores", neg, "neg", location)
    if bool(pos_scores) != bool(neg_scores) and neg:
        missing = "neg_scores" if pos_scores else "pos_scores"
        raise DataError(location, "expected teacher scores for both pos and neg (pos_scores and neg_scores), "
                        "got nothing (missing)", f"field {missing!r}", missing)
    return ValidRecord(query=query, pos=pos, neg=neg, prompt=prompt, type=task_type,
                       pos_scores=pos_scores, neg_scores=neg_scores)


def decode_json_line(raw: bytes, location: str) -> Any:
    """Decodes one line of a JSONL file: strict UTF-8, then JSON; errors name the location."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(location, f"invalid UTF-8 at byte {e.start}", "invalid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(location, f"malformed JSON ({e.msg} at column {e.colno})", "bad JSON") from None


@dataclasses.dataclass
class LoadReport:
    """What loading kept and dropped: skipped records by reason (skip mode) and exact duplicates."""

    loaded: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first_errors: list[str] = dataclasses.field(default_factory=list)
    duplicate_pairs: int = 0
    duplicate_examples: int = 0
    max_examples_shown: int = 5

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def record_skip(self, error: DataError) -> None:
        self.skipped[error.reason] += 1
        if len(self.first_errors) < self.max_examples_shown:
            self.first_errors.append(str(error))

    def merge(self, other: "LoadReport") -> None:
        self.loaded += other.loaded
        self.skipped.update(other.skipped)
        room = self.max_examples_shown - len(self.first_errors)
        self.first_errors.extend(other.first_errors[: max(room, 0)])
        self.duplicate_pairs += other.duplicate_pairs
        self.duplicate_examples += other.duplicate_examples

    def summary(self) -> str:
        """One human-readable paragraph: counts, reasons and the first few error messages."""
        lines = [f"loaded {self.loaded} examples; skipped {self.num_skipped} bad records; dropped "
                 f"{self.duplicate_pairs} duplicate (query, positive) pairs "
                 f"({self.duplicate_examples} examples left without positives)"]
        for reason, count in sorted(self.skipped.items()):
            lines.append(f"  skipped {count}: {reason}")
        for message in self.first_errors:
            lines.append(f"  e.g. {message}")
        return "\n".join(lines)


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")


class DuplicateFilter:
    """Drops exact duplicate (query, positive) pairs across the records of one dataset, counting them."""

    def __init__(self, report: LoadReport):
        self._seen: set[tuple[str, str]] = set()
        self._report = report

    def keep_positives(self, query: str, pos: tuple[str, ...]) -> tuple[str, ...]:
        """The positives of `query` not seen before (empty when all were duplicates)."""
        kept = []
        for p in pos:
            key = (query, p)
            if key in self._seen:
                self._report.duplicate_pairs += 1
                continue
            self._seen.add(key)
            kept.append(p)
        if not kept:
            self._report.duplicate_examples += 1
        return tuple(kept)
