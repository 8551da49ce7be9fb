"""Captions and class labels: what a conditional model sees beside each image (conventions.md, "Images").

Captions (text-to-image models), in order of precedence:
1. ``--caption`` for every image;
2. a sidecar ``NAME.txt`` beside ``NAME.png``;
3. a ``captions.csv`` (columns ``file,caption``) or ``captions.jsonl`` (``{"file": ..., "caption": ...}``)
   at the top of the folder, ``file`` relative to the folder (or a bare file name when unambiguous).
An image with none gets the empty caption, and the audit says how many.

Class labels (class-conditional models): a ``labels.csv`` (``file,label``) at the top of the folder,
or one sub-folder per class id (``3/img.png``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

from cdi_audit.errors import InputProblem
from cdi_audit.inputs.images import ImageSet

# What a model is conditioned on, hence what each image needs: nothing, a class id (DiT), or a caption.
Conditioning = Literal["none", "class", "text"]


class _Malformed(ValueError):
    """A table entry that cannot be read: the line it starts on, what is wrong, and what to do about it."""

    def __init__(self, line: int, problem: str, fix: str = "fix or remove the file") -> None:
        super().__init__(problem)
        self.line, self.fix = line, fix


def _unclosed_quote(line: int) -> _Malformed:
    """A quoted field running past its line: an unclosed quote swallows the rows after it, so refuse it."""
    return _Malformed(line, "a quote opened on this line is not closed on it",
                      "close the quote, and keep each entry on one line")


def _read_utf8(path: Path) -> str:
    """The file's text; a UTF-8 BOM (Excel's "CSV UTF-8") is dropped, another encoding is refused by line."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputProblem(f"{path} cannot be read ({type(error).__name__}: {error}); "
                           "make it readable or remove it.") from None
    body = data.removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        line = body[:error.start].count(b"\n") + 1
        raise InputProblem(f"{path} line {line} is not UTF-8 text; save the file as UTF-8.") from None


def _csv_records(text: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each non-blank CSV record; a record running over several lines is an unclosed quote."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            if reader.line_num > start or "end of data" in str(error):
                raise _unclosed_quote(start) from None
            raise _Malformed(start, str(error)) from None
        if reader.line_num > start:
            raise _unclosed_quote(start)
        if fields:
            yield start, fields
        start = reader.line_num + 1


def _csv_rows(text: str, value_field: str) -> list[tuple[int, str, str]]:
    """Rows of a CSV with a header naming ``file`` and ``value_field``; every row must have the header's fields."""
    records = _csv_records(text)
    line, header = next(records, (1, []))
    if {"file", value_field} - set(header):
        raise _Malformed(line, f"expected a header row with the columns file,{value_field}")
    file_at, value_at = header.index("file"), header.index(value_field)
    rows = []
    for line, fields in records:
        if len(fields) != len(header):
            count = f"{len(fields)} field" + ("" if len(fields) == 1 else "s")
            raise _Malformed(line, f"{count} where the header has {len(header)}",
                             'put a value that contains a comma in double quotes ("red, round")')
        rows.append((line, fields[file_at], fields[value_at]))
    return rows


def _jsonl_rows(text: str, value_field: str) -> list[tuple[int, str, str]]:
    """Rows of a JSONL file, one object per line (split on newlines only: JSON strings may hold U+2028)."""
    rows = []
    for line, entry_text in enumerate(text.split("\n"), start=1):
        if not entry_text.strip():
            continue
        try:
            entry = json.loads(entry_text)
        except ValueError as error:
            raise _Malformed(line, str(error)) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or value_field not in entry:
            raise _Malformed(line, f'expected an object with "file" and "{value_field}"')
        rows.append((line, entry["file"], str(entry[value_field])))
    return rows


def _read_table(path: Path, value_field: str) -> list[tuple[int, str, str]]:
    """(line number, file, value) rows of a captions/labels CSV or JSONL file; malformed rows are an error."""
    text = _read_utf8(path)
    try:
        return _jsonl_rows(text, value_field) if path.suffix == ".jsonl" else _csv_rows(text, value_field)
    except _Malformed as error:
        raise InputProblem(f"{path} line {error.line} is malformed ({error}); {error.fix}.") from None


def _index(rows: list[tuple[int, str, str]], root: Path, images: ImageSet, source: Path) -> dict[Path, str]:
    """Map each listed file to its value, by path relative to ``root`` or by a bare, unambiguous name.

    Rows are matched against every file the scan met: a row for an image the screen left out (a near-duplicate)
    or a file it skipped is no error, and its value simply goes unused."""
    scanned = [record.path for record in (*images.records, *images.excluded)]
    scanned += [Path(item.path) for item in images.skipped]
    by_relative = {path.relative_to(root).as_posix(): path for path in scanned}
    by_name: dict[str, list[Path]] = {}
    for path in scanned:
        by_name.setdefault(path.name, []).append(path)
    values: dict[Path, str] = {}
    for number, name, value in rows:
        path = by_relative.get(name)
        if path is None and len(by_name.get(name, [])) == 1:
            path = by_name[name][0]
        if path is None:
            raise InputProblem(f"{source} line {number} names {name!r}, which is not an image file in {root}.")
        values[path] = value
    return values


def _captions_file(root: Path) -> Path | None:
    found = [root / name for name in ("captions.csv", "captions.jsonl") if (root / name).is_file()]
    if len(found) > 1:
        raise InputProblem(f"{root} has both captions.csv and captions.jsonl; keep one.")
    return found[0] if found else None


def with_captions(images: ImageSet, caption: str | None = None) -> tuple[ImageSet, list[str]]:
    """The set with a caption on every record, and notes for the report."""
    if caption is not None:
        return replace(images, records=[replace(r, caption=caption) for r in images.records]), []
    source = _captions_file(images.root)
    listed = _index(_read_table(source, "caption"), images.root, images, source) if source else {}
    records, missing = [], 0
    for record in images.records:
        sidecar = record.path.with_suffix(".txt")
        if sidecar.is_file():
            text = _read_utf8(sidecar).strip()
        elif record.path in listed:
            text = listed[record.path]
        else:
            text, missing = "", missing + 1
        records.append(replace(record, caption=text))
    notes = []
    if missing:
        notes.append(f"{missing} of {len(images)} images in {images.root} have no caption (no sidecar .txt, "
                     "no captions.csv/jsonl entry); the model saw them with the empty caption.")
    return replace(images, records=records), notes


def with_labels(images: ImageSet) -> ImageSet:
    """The set with a class id on every record, from labels.csv or class sub-folders; missing ones stay None."""
    source = images.root / "labels.csv"
    listed = _index(_read_table(source, "label"), images.root, images, source) if source.is_file() else {}
    records = []
    for record in images.records:
        value = listed.get(record.path)
        if value is None:
            parts = record.path.relative_to(images.root).parts
            value = parts[0] if len(parts) > 1 and parts[0].isdigit() else None
        try:
            label = None if value is None else int(value)
        except ValueError:
            raise InputProblem(f"{source}: the label of {record.path.name} is {value!r}, not a class id.") from None
        records.append(replace(record, label=label))
    return replace(images, records=records)


def with_conditions(images: ImageSet, conditioning: Conditioning, caption: str | None = None
                    ) -> tuple[ImageSet, list[str]]:
    """Attach what the model is conditioned on; unconditional models leave records unchanged."""
    if conditioning == "text":
        return with_captions(images, caption)
    if conditioning == "class":
        return with_labels(images), []
    notes = ["--caption is ignored: the model is not text-conditioned."] if caption is not None else []
    return images, notes

