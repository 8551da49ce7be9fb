"""Captions and class labels: what a conditional model sees beside each image (docs/inputs.md, "Captions and classes").

Captions (text-to-image models), in order of precedence:
1. ``--caption`` for every image;
2. a sidecar ``NAME.txt`` beside ``NAME.png``;
3. a ``captions.csv`` (columns ``file,caption``) or ``captions.jsonl`` (``{"file": ..., "caption": ...}``)
   at the top of the folder, ``file`` relative to the folder (or a bare file name when unambiguous).
An image with none gets the empty caption, and the audit says how many.

Class labels (class-conditional models): a ``labels.csv`` (``file,label``) at the top of the folder,
or one sub-folder per class id (``3/img.png``).

Each record keeps where its condition came from: "--caption", "sidecar", "captions.csv", "captions.jsonl",
"labels.csv", "sub-folder", or "none" (no caption or an empty one; no class id). The audit's p-value holds only
if the suspect and reference images reach the model under the same rule, so ``require_alike`` refuses sets
whose conditions come from different kinds of source.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

from cdi_audit.errors import InputProblem
from cdi_audit.inputs.images import ImageRecord, ImageSet

# What a model is conditioned on, hence what each image needs: nothing, a class id (DiT), or a caption.
Conditioning = Literal["none", "class", "text"]
# Where a condition came from, in the order a refusal lists them, with how a refusal names them.
SOURCE_NAMES = {"--caption": "--caption", "sidecar": "sidecar .txt files", "captions.csv": "captions.csv",
                "captions.jsonl": "captions.jsonl", "labels.csv": "labels.csv", "sub-folder": "class sub-folders"}
LABEL_SOURCES = frozenset({"labels.csv", "sub-folder"})
NO_SOURCE = "none"
CLASS_ID = re.compile(r"[0-9]+")


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


def _shown(value: object) -> str:
    """A JSON value as a refusal quotes it; lists and objects by their kind alone (they may be huge or deep)."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return json.dumps(value)[:40]


def _checked_value(line: int, value_field: str, value: object) -> str:
    """A caption as it is; a label as its class id's digits. Anything else is refused rather than turned into
    text: a JSON null would otherwise become the caption "None", which the model reads as a word."""
    if value_field == "caption":
        if isinstance(value, str):
            return value
        raise _Malformed(line, f"the caption is {_shown(value)}, not text",
                         "leave the entry out for an image with no caption")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and CLASS_ID.fullmatch(value):
        return str(int(value))
    raise _Malformed(line, f"the label {_shown(value)} is not a class id, a whole number such as 3",
                     "give the class id in digits, or leave the entry out for an image with no label")


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
        rows.append((line, fields[file_at], _checked_value(line, value_field, fields[value_at])))
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
        except RecursionError:
            raise _Malformed(line, "it is nested too deeply to read") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or value_field not in entry:
            raise _Malformed(line, f'expected an object with "file" and "{value_field}"')
        rows.append((line, entry["file"], _checked_value(line, value_field, entry[value_field])))
    return rows


def _read_table(path: Path, value_field: str) -> list[tuple[int, str, str]]:
    """(line number, file, value) rows of a captions/labels CSV or JSONL file; malformed rows are an error."""
    text = _read_utf8(path)
    try:
        return _jsonl_rows(text, value_field) if path.suffix == ".jsonl" else _csv_rows(text, value_field)
    except _Malformed as error:
        raise InputProblem(f"{path} line {error.line} is malformed ({error}); {error.fix}.") from None


def _index(rows: list[tuple[int, str, str]], root: Path, images: ImageSet, source: Path, value_field: str
           ) -> dict[Path, str]:
    """Map each listed file to its value, by path relative to ``root`` or by a bare, unambiguous name.

    Rows are matched against every file the scan met: a row for an image the screen left out (a near-duplicate)
    or a file it skipped is no error, and its value simply goes unused. Two rows giving one image different
    values are refused: which one the owner meant cannot be known."""
    scanned = [record.path for record in (*images.records, *images.excluded)]
    scanned += [Path(item.path) for item in images.skipped]
    by_relative = {path.relative_to(root).as_posix(): path for path in scanned}
    by_name: dict[str, list[Path]] = {}
    for path in scanned:
        by_name.setdefault(path.name, []).append(path)
    values: dict[Path, tuple[int, str]] = {}
    for number, name, value in rows:
        path = by_relative.get(name)
        if path is None:
            path = _only_file_named(name, by_name.get(name, []), root, source, number)
        first_number, first_value = values.setdefault(path, (number, value))
        if first_value != value:
            raise InputProblem(
                f"{source} lines {first_number} and {number} give {path.relative_to(root).as_posix()} different "
                f"{value_field}s ({first_value!r} and {value!r}); keep the one you mean.")
    return {path: value for path, (_, value) in values.items()}


def _only_file_named(name: str, matches: list[Path], root: Path, source: Path, number: int) -> Path:
    """The one scanned file with this bare name; none, or several in different sub-folders, is an error."""
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise InputProblem(
            f"{source} line {number} names {name!r}, which is ambiguous: {len(matches)} files in {root} have that "
            f"name; give the path relative to the folder (e.g. {matches[0].relative_to(root).as_posix()!r}).")
    raise InputProblem(f"{source} line {number} names {name!r}, which is not an image file in {root}.")


def _captions_file(root: Path) -> Path | None:
    found = [root / name for name in ("captions.csv", "captions.jsonl") if (root / name).is_file()]
    if len(found) > 1:
        raise InputProblem(f"{root} has both captions.csv and captions.jsonl; keep one.")
    return found[0] if found else None


def _caption_source(kind: str, text: str) -> str:
    """An empty caption is no caption, wherever it was written: the model sees both alike."""
    return kind if text.strip() else NO_SOURCE


def with_captions(images: ImageSet, caption: str | None = None) -> tuple[ImageSet, list[str]]:
    """The set with a caption and its source on every record, and notes for the report."""
    if caption is not None:
        source = _caption_source("--caption", caption)
        return replace(images, records=[replace(r, caption=caption, condition_source=source)
                                        for r in images.records]), []
    table = _captions_file(images.root)
    listed = _index(_read_table(table, "caption"), images.root, images, table, "caption") if table else {}
    records, missing = [], 0
    for record in images.records:
        sidecar = record.path.with_suffix(".txt")
        if sidecar.is_file():
            text, kind = _read_utf8(sidecar).strip(), "sidecar"
        elif record.path in listed:
            text, kind = listed[record.path], table.name
        else:
            text, kind, missing = "", NO_SOURCE, missing + 1
        records.append(replace(record, caption=text, condition_source=_caption_source(kind, text)))
    notes = []
    if missing:
        notes.append(f"{missing} of {len(images)} images in {images.root} have no caption (no sidecar .txt, "
                     "no captions.csv/jsonl entry); the model saw them with the empty caption.")
    return replace(images, records=records), notes


def _folder_label(images: ImageSet, record: ImageRecord) -> str | None:
    """The class id a record's top sub-folder names (``3/img.png``), if it names one."""
    parts = record.path.relative_to(images.root).parts
    return parts[0] if len(parts) > 1 and CLASS_ID.fullmatch(parts[0]) else None


def with_labels(images: ImageSet) -> ImageSet:
    """The set with a class id and its source on every record, from labels.csv or class sub-folders; missing
    ones stay None."""
    table = images.root / "labels.csv"
    listed = _index(_read_table(table, "label"), images.root, images, table, "label") if table.is_file() else {}
    records = []
    for record in images.records:
        if record.path in listed:
            label, kind = int(listed[record.path]), "labels.csv"
        elif (folder := _folder_label(images, record)) is not None:
            label, kind = int(folder), "sub-folder"
        else:
            label, kind = None, NO_SOURCE
        records.append(replace(record, label=label, condition_source=kind))
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


def _kinds(images: ImageSet) -> frozenset[str]:
    return frozenset(images.condition_sources) - {NO_SOURCE}


def _describe(role: str, images: ImageSet, noun: str) -> str:
    """Where one set's conditions come from, with how many images each kind of source covers."""
    counts = Counter(images.condition_sources)
    if not _kinds(images):
        return f"the {role} set has none (0 of {len(images)})"
    found = [f"{SOURCE_NAMES[kind]} ({counts[kind]} of {len(images)} images)" for kind in SOURCE_NAMES if counts[kind]]
    return f"the {role} set's {noun} come from {' and '.join(found)}"


def require_alike(sets: list[tuple[str, ImageSet]]) -> None:
    """Refuse sets (each with its role: "suspect", "reference", "members", ...) whose conditions come from
    different kinds of source, or that are conditioned in one set and not at all in another.

    The model's familiarity with an image depends on what it is conditioned on: captioned images score
    differently from uncaptioned ones whether or not the model was trained on them, so sets conditioned under
    different rules can look like evidence of training on their own. Sets drawing on the same kinds of source
    with different coverage pass here; the shift check's caption statistics judge that. Empty sets say nothing.
    """
    given = [(role, images) for role, images in sets if len(images)]
    if len({_kinds(images) for _, images in given}) <= 1:
        return
    labels = any(_kinds(images) & LABEL_SOURCES for _, images in given)
    noun = "class labels" if labels else "captions"
    fix = ("label both sets the same way (a labels.csv in each, or class sub-folders in each)" if labels
           else "caption both sets the same way or give one --caption for all")
    details = ", ".join(_describe(role, images, noun) for role, images in given)
    raise InputProblem(f"The sets' {noun} do not come from the same kind of source: {details}; the model would see "
                       f"the sets under different rules, which alone can look like evidence, so {fix}.")
