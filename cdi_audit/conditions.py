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

import csv
import json
from dataclasses import replace
from pathlib import Path

from cdi_audit.errors import InputProblem
from cdi_audit.images import ImageSet
from cdi_audit.targets.base import Conditioning


def _read_table(path: Path, value_field: str) -> list[tuple[int, str, str]]:
    """(line number, file, value) rows of a captions/labels CSV or JSONL file; malformed rows are an error."""
    rows, line = [], 0
    try:
        if path.suffix == ".jsonl":
            for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not text.strip():
                    continue
                entry = json.loads(text)
                if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or value_field not in entry:
                    raise ValueError(f'expected an object with "file" and "{value_field}"')
                rows.append((line, entry["file"], str(entry[value_field])))
        else:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                line = 1
                if reader.fieldnames is None or {"file", value_field} - set(reader.fieldnames):
                    raise ValueError(f"expected a header row with the columns file,{value_field}")
                for entry in reader:
                    line = reader.line_num
                    if entry["file"] is None or entry[value_field] is None:
                        raise ValueError(f"expected the columns file,{value_field}")
                    rows.append((line, entry["file"], entry[value_field]))
    except (ValueError, UnicodeDecodeError, csv.Error) as error:
        where = f" line {line}" if line else ""
        raise InputProblem(f"{path}{where} is malformed ({error}); fix or remove the file.") from None
    return rows


def _index(rows: list[tuple[int, str, str]], root: Path, images: ImageSet, source: Path) -> dict[Path, str]:
    """Map each listed file to its value, by path relative to ``root`` or by a bare, unambiguous name."""
    by_relative = {record.path.relative_to(root).as_posix(): record.path for record in images.records}
    by_name: dict[str, list[Path]] = {}
    for record in images.records:
        by_name.setdefault(record.path.name, []).append(record.path)
    values: dict[Path, str] = {}
    for number, name, value in rows:
        path = by_relative.get(name)
        if path is None and len(by_name.get(name, [])) == 1:
            path = by_name[name][0]
        if path is None:
            raise InputProblem(f"{source} line {number} names {name!r}, which is not a usable image in {root}.")
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
        return ImageSet(images.root, [replace(r, caption=caption) for r in images.records], images.skipped), []
    source = _captions_file(images.root)
    listed = _index(_read_table(source, "caption"), images.root, images, source) if source else {}
    records, missing = [], 0
    for record in images.records:
        sidecar = record.path.with_suffix(".txt")
        if sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8").strip()
        elif record.path in listed:
            text = listed[record.path]
        else:
            text, missing = "", missing + 1
        records.append(replace(record, caption=text))
    notes = []
    if missing:
        notes.append(f"{missing} of {len(images)} images in {images.root} have no caption (no sidecar .txt, "
                     "no captions.csv/jsonl entry); the model saw them with the empty caption.")
    return ImageSet(images.root, records, images.skipped), notes


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
    return ImageSet(images.root, records, images.skipped)


def with_conditions(images: ImageSet, conditioning: Conditioning, caption: str | None = None
                    ) -> tuple[ImageSet, list[str]]:
    """Attach what the model is conditioned on; unconditional models leave records unchanged."""
    if conditioning == "text":
        return with_captions(images, caption)
    if conditioning == "class":
        return with_labels(images), []
    notes = ["--caption is ignored: the model is not text-conditioned."] if caption is not None else []
    return images, notes

