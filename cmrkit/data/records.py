"""Routing records: one prompt paired with the model that should serve it, read from JSON Lines.

The CMRBench processed files (``data/processed/cleaned-<experience>-<split>.json``) hold one JSON
object per line. Each object carries the prompt (``instruction``), the target model id
(``model_name``), its family (``model_family``) and its domain (``domain``, "<area> <task>"),
plus fields this module ignores (``created_at``, ``api_data``, ``explanation`` and others).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("cmrkit.data")

EXPERIENCES: tuple[str, ...] = ("apibench-hf", "mllm", "hugging-bench-1", "hugging-bench-2")
"""Upstream names of the four CMRBench experiences, E1 to E4, in stream order."""

INSTRUCTION_PREFIX = "###Instruction: "
INSTRUCTION_PREFIX_VARIANT = "### Instruction: "
"""Marker that starts the E1 (APIBench) and E2 (ToolMMBench) prompts upstream."""

REQUIRED_FIELDS: tuple[str, ...] = ("model_name", "model_family", "instruction", "domain")
"""Record fields that must be present as non-empty strings."""

RECORD_SPLITS: tuple[str, ...] = ("train", "test")


class DataFormatError(ValueError):
    """A data file line that cannot be read as a routing record.

    The message starts with the file's relative path and the 1-based line number, and names the
    offending field when one field is at fault. The same facts are kept as attributes.
    """

    def __init__(self, relpath: str, line: int, problem: str, *, field: str | None = None) -> None:
        where = f"{relpath}, line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.relpath = relpath
        self.line = line
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class RoutingRecord:
    """One prompt of CMRBench and the model id that should serve it."""

    prompt: str
    """The ``instruction`` field without a leading ``###Instruction: `` marker, otherwise unchanged."""
    model_id: str
    """The ``model_name`` field: a Hugging Face model id, the routing label."""
    family: str
    """The ``model_family`` field."""
    domain: str
    """The ``domain`` field, e.g. "Natural Language Processing Translation"."""
    experience: int
    """0-based index into ``EXPERIENCES``."""
    split: str
    """``"train"`` or ``"test"``."""
    source: str
    """Relative path of the source file, e.g. data/processed/cleaned-mllm-eval.json."""
    line: int
    """1-based line number in ``source``."""


def strip_instruction_prefix(instruction: str) -> str:
    """Remove one leading ``INSTRUCTION_PREFIX`` from a prompt and return the rest.

    Prompts without the marker come back unchanged. The variant ``"### Instruction: "`` (a space
    after the hashes), which five E1 prompts of the release at commit 712e77b carry, is removed
    too.
    """
    for prefix in (INSTRUCTION_PREFIX, INSTRUCTION_PREFIX_VARIANT):
        if instruction.startswith(prefix):
            return instruction[len(prefix) :]
    return instruction


def read_records(path: Path, *, relpath: str, experience: int, split: str) -> list[RoutingRecord]:
    """Read every routing record of one JSON Lines file.

    Args:
        path: Local file to read (UTF-8).
        relpath: Path of the file relative to the release root, stored in each record's
            ``source`` and into error messages.
        experience: 0-based experience index stored in each record.
        split: ``"train"`` or ``"test"``, stored in each record.

    Returns:
        The records in file order.

    Raises:
        DataFormatError: A line is not UTF-8, not valid JSON or not a JSON object, or one of
            ``REQUIRED_FIELDS`` is missing, not a string or empty. Blank lines are skipped and
            counted in a log line. No other line is dropped.
        ValueError: ``experience`` or ``split`` is out of range.
    """
    if not 0 <= experience < len(EXPERIENCES):
        raise ValueError(f"invalid experience index {experience}: expected 0 to {len(EXPERIENCES) - 1}")
    if split not in RECORD_SPLITS:
        raise ValueError(f"invalid split {split!r}: expected one of {', '.join(RECORD_SPLITS)}")

    records: list[RoutingRecord] = []
    blank_lines = 0
    with Path(path).open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            obj = parse_json_line(raw, relpath=relpath, line=line_number)
            if obj is None:
                blank_lines += 1
                continue
            records.append(
                _make_record(obj, relpath=relpath, line=line_number, experience=experience, split=split)
            )

    level = logging.INFO if blank_lines else logging.DEBUG
    logger.log(
        level,
        "read %d records from %s (%d blank lines skipped)",
        len(records),
        relpath,
        blank_lines,
    )
    return records


def parse_json_line(raw: bytes, *, relpath: str, line: int) -> dict[str, Any] | None:
    """Decode one JSON Lines line into an object, or return None for a blank line.

    Raises:
        DataFormatError: The line is not UTF-8, not valid JSON or not a JSON object.
    """
    try:
        # Without the line break, a truncated line reports the column where it ends, not column 1
        # of a following line.
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataFormatError(relpath, line, f"invalid UTF-8 ({exc.reason})") from exc
    if not text.strip():
        return None

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(relpath, line, f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(obj, dict):
        raise DataFormatError(relpath, line, f"expected a JSON object, got a JSON {type(obj).__name__}")
    return obj


def _make_record(
    obj: dict[str, Any], *, relpath: str, line: int, experience: int, split: str
) -> RoutingRecord:
    values = {name: required_string(obj, name, relpath=relpath, line=line) for name in REQUIRED_FIELDS}
    prompt = strip_instruction_prefix(values["instruction"])
    if not prompt.strip():
        raise DataFormatError(
            relpath,
            line,
            f"the prompt is empty after removing the {INSTRUCTION_PREFIX!r} prefix",
            field="instruction",
        )

    return RoutingRecord(
        prompt=prompt,
        model_id=values["model_name"],
        family=values["model_family"],
        domain=values["domain"],
        experience=experience,
        split=split,
        source=relpath,
        line=line,
    )


def required_string(obj: dict[str, Any], field: str, *, relpath: str, line: int) -> str:
    """Return ``obj[field]``, raising DataFormatError unless it is a non-empty string."""
    if field not in obj:
        raise DataFormatError(relpath, line, "missing required field", field=field)
    value = obj[field]
    if not isinstance(value, str):
        raise DataFormatError(relpath, line, f"expected a string, got {type(value).__name__}", field=field)
    if not value.strip():
        raise DataFormatError(relpath, line, "empty string", field=field)
    return value
