"""Reading routing records from JSON Lines files."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import pytest
from data_fixtures import MIRROR, record_row, requires_mirror, write_jsonl

from cmrkit.data.records import (
    EXPERIENCES,
    INSTRUCTION_PREFIX,
    DataFormatError,
    RoutingRecord,
    read_records,
    strip_instruction_prefix,
)

RELPATH = "data/processed/cleaned-mllm-val.json"


def read(path, **kwargs):
    options = {"relpath": RELPATH, "experience": 1, "split": "train"} | kwargs
    return read_records(path, **options)


def test_experiences_in_stream_order():
    assert EXPERIENCES == ("apibench-hf", "mllm", "hugging-bench-1", "hugging-bench-2")


def test_good_file_parses(tmp_path):
    path = write_jsonl(
        tmp_path / "good.json",
        [
            record_row("org/a", "###Instruction: translate this\n###Input: hola", family="a"),
            record_row("org/b", "Detect the objects in this image.", family="b", domain="CV"),
        ],
    )

    records = read(path)

    assert records == [
        RoutingRecord(
            prompt="translate this\n###Input: hola",
            model_id="org/a",
            family="a",
            domain="Natural Language Processing Translation",
            experience=1,
            split="train",
            source=RELPATH,
            line=1,
        ),
        RoutingRecord(
            prompt="Detect the objects in this image.",
            model_id="org/b",
            family="b",
            domain="CV",
            experience=1,
            split="train",
            source=RELPATH,
            line=2,
        ),
    ]


def test_record_is_frozen(tmp_path):
    record = read(write_jsonl(tmp_path / "one.json", [record_row()]))[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.prompt = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("instruction", "prompt"),
    [
        ("###Instruction: Translate this.", "Translate this."),
        ("###Instruction: a\n###Input: b", "a\n###Input: b"),
        ("Translate this.", "Translate this."),
        ("  leading spaces are kept ", "  leading spaces are kept "),
        ("### Instruction: spaced variant", "spaced variant"),
        ("Say ###Instruction: inside", "Say ###Instruction: inside"),
        ("###Instruction: ###Instruction: twice", "###Instruction: twice"),
    ],
)
def test_prefix_handling(instruction, prompt):
    assert strip_instruction_prefix(instruction) == prompt


def test_blank_lines_skipped_and_counted(tmp_path, caplog):
    path = write_jsonl(tmp_path / "blank.json", ["", record_row(), "   ", "\t"])

    with caplog.at_level(logging.DEBUG, logger="cmrkit.data"):
        records = read(path)

    assert [r.line for r in records] == [2]
    assert "3 blank lines skipped" in caplog.text


BAD_LINES = [
    pytest.param('{"model_name": "m", oops}', None, "invalid JSON", id="malformed-json"),
    pytest.param('["a", "list"]', None, "JSON object", id="not-an-object"),
    pytest.param(record_row(instruction=None), "instruction", "string", id="null-field"),
    pytest.param(record_row(domain=3), "domain", "string", id="number-field"),
    pytest.param(record_row(model="   "), "model_name", "empty", id="blank-field"),
    pytest.param(
        {k: v for k, v in record_row().items() if k != "model_family"},
        "model_family",
        "missing",
        id="missing-field",
    ),
    pytest.param(record_row(instruction=INSTRUCTION_PREFIX), "instruction", "empty", id="prefix-only"),
]


@pytest.mark.parametrize(("bad_row", "field", "problem"), BAD_LINES)
def test_bad_line_raises(tmp_path, bad_row, field, problem):
    path = write_jsonl(tmp_path / "bad.json", [record_row(), record_row(), bad_row])

    with pytest.raises(DataFormatError) as info:
        read(path)

    message = str(info.value)
    assert RELPATH in message
    assert "line 3" in message
    assert problem in message
    assert info.value.line == 3
    assert info.value.field == field
    if field is not None:
        assert repr(field) in message


def test_invalid_utf8_raises(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"model_name": "caf\xe9"}\n')

    with pytest.raises(DataFormatError, match=r"line 1: invalid UTF-8"):
        read(path)


@pytest.mark.parametrize(("experience", "split"), [(4, "train"), (-1, "test"), (0, "val")])
def test_invalid_arguments_rejected(tmp_path, experience, split):
    path = write_jsonl(tmp_path / "one.json", [record_row()])
    with pytest.raises(ValueError, match="invalid"):
        read(path, experience=experience, split=split)


@requires_mirror
@pytest.mark.parametrize("name", EXPERIENCES)
def test_mirror_prompts_lose_prefix(name):
    relpath = f"data/processed/cleaned-{name}-val.json"

    records = read_records(MIRROR / relpath, relpath=relpath, experience=0, split="train")

    assert not [r for r in records if r.prompt.startswith(INSTRUCTION_PREFIX)]


def test_records_import_is_light():
    code = "import sys, cmrkit.data.records; print(sorted({'avalanche', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_package_exports_resolve():
    import cmrkit.data

    missing = [name for name in cmrkit.data.__all__ if getattr(cmrkit.data, name, None) is None]
    assert missing == []


def test_truncated_line_reports_its_column():
    from cmrkit.data.records import DataFormatError, parse_json_line

    with pytest.raises(DataFormatError, match="column 10"):
        parse_json_line(b'{"a": 1, \n', relpath="data/x.json", line=3)
