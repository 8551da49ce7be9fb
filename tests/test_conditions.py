"""Captions and class labels from the files users keep beside their images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_images

from cdi_audit.errors import InputProblem
from cdi_audit.inputs.conditions import with_captions, with_conditions, with_labels
from cdi_audit.inputs.images import scan_image_set


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_images(tmp_path / "set", 4, seed=3, prefix="img")
    return tmp_path / "set"


def captions_of(images) -> dict[str, str | None]:
    return {record.path.name: record.caption for record in images.records}


def test_sidecars_win_over_the_captions_file_and_missing_ones_are_reported(folder: Path) -> None:
    (folder / "img_000.txt").write_text("a sidecar caption\n")
    (folder / "captions.csv").write_text('file,caption\nimg_000.png,from the csv\nimg_001.png,"red, round"\n')
    images, notes = with_captions(scan_image_set(folder))
    assert captions_of(images) == {"img_000.png": "a sidecar caption", "img_001.png": "red, round",
                                   "img_002.png": "", "img_003.png": ""}
    assert notes == [f"2 of 4 images in {folder} have no caption (no sidecar .txt, no captions.csv/jsonl entry); "
                     "the model saw them with the empty caption."]


def test_captions_jsonl_and_one_caption_for_all(folder: Path) -> None:
    (folder / "captions.jsonl").write_text(
        "\n".join(json.dumps({"file": f"img_{i:03d}.png", "caption": f"caption {i}"}) for i in range(4)) + "\n")
    images, notes = with_captions(scan_image_set(folder))
    assert captions_of(images)["img_003.png"] == "caption 3" and notes == []
    everything, _ = with_captions(scan_image_set(folder), caption="a photo")
    assert set(captions_of(everything).values()) == {"a photo"}


@pytest.mark.parametrize(("name", "content", "where"), [
    ("captions.csv", "img_000.png,no header\n", "captions.csv line 1"),
    ("captions.jsonl", '{"file": "img_000.png", "caption": "ok"}\n{"file": "img_001.png"}\n', "captions.jsonl line 2"),
    ("captions.jsonl", '{"file": "img_000.png", "caption": "ok"}\nnot json\n', "captions.jsonl line 2"),
    ("captions.csv", "file,caption\nmissing.png,text\n", "captions.csv line 2 names 'missing.png'"),
    ("captions.csv", "file,caption\nimg_000.png,ok\nimg_001.png,red, round\n",
     'captions.csv line 3 is malformed (3 fields where the header has 2); put a value that contains a comma in '
     'double quotes ("red, round").'),
    ("captions.csv", "file,caption\nimg_000.png\n",
     "captions.csv line 2 is malformed (1 field where the header has 2)"),
    # an unclosed quote would swallow the rows after it into one caption
    ("captions.csv", 'file,caption\nimg_000.png,"red\nimg_001.png,blue\nimg_002.png,"green"\n',
     "captions.csv line 2 is malformed (a quote opened on this line is not closed on it); close the quote, "
     "and keep each entry on one line."),
    ("captions.csv", 'file,caption\nimg_000.png,ok\n\nimg_001.png,"never closed\n',
     "captions.csv line 4 is malformed (a quote opened on this line is not closed on it)"),
    ("captions.csv", 'file,caption\nimg_000.png,ok\nimg_001.png,"two\nlines"\nimg_002.png,ok\n',
     "captions.csv line 3 is malformed (a quote opened on this line is not closed on it)"),
    ("captions.csv", 'file,caption\r\nimg_000.png,"a" b\r\n', "captions.csv line 2 is malformed"),
])
def test_malformed_caption_files_name_the_file_and_line(folder: Path, name: str, content: str, where: str) -> None:
    (folder / name).write_text(content, newline="")
    with pytest.raises(InputProblem, match=re.escape(where)) as refused:
        with_captions(scan_image_set(folder))
    assert refused.value.exit_code == 3


def test_labels_from_a_csv_or_from_class_folders(tmp_path: Path) -> None:
    write_images(tmp_path / "by_folder" / "0", 2, seed=1, prefix="a")
    write_images(tmp_path / "by_folder" / "7", 2, seed=2, prefix="b")
    labels = {r.path.name: r.label for r in with_labels(scan_image_set(tmp_path / "by_folder")).records}
    assert labels == {"a_000.png": 0, "a_001.png": 0, "b_000.png": 7, "b_001.png": 7}
    write_images(tmp_path / "by_csv", 2, seed=3, prefix="c")
    (tmp_path / "by_csv" / "labels.csv").write_text("file,label\nc_000.png,3\nc_001.png,x\n")
    with pytest.raises(InputProblem, match="not a class id"):
        with_labels(scan_image_set(tmp_path / "by_csv"))
    (tmp_path / "by_csv" / "labels.csv").write_text("file,label\nc_000.png,3\n")
    labels = {r.path.name: r.label for r in with_labels(scan_image_set(tmp_path / "by_csv")).records}
    assert labels == {"c_000.png": 3, "c_001.png": None}


def test_a_condition_changes_the_feature_row_key_but_not_the_file_hash(folder: Path) -> None:
    plain = scan_image_set(folder)
    captioned, _ = with_conditions(plain, "text", caption="a photo")
    other, _ = with_conditions(plain, "text", caption="another photo")
    unchanged, notes = with_conditions(plain, "none", caption="a photo")
    assert captioned.hashes == plain.hashes == unchanged.keys
    assert set(captioned.keys).isdisjoint(plain.keys) and set(captioned.keys).isdisjoint(other.keys)
    assert notes == ["--caption is ignored: the model is not text-conditioned."]


def test_quoted_commas_blank_lines_and_crlf_are_read(folder: Path) -> None:
    (folder / "captions.csv").write_bytes(
        b'file,caption\r\nimg_000.png,"red, round"\r\n\r\nimg_001.png,"say ""hi"""\r\n')
    images, _ = with_captions(scan_image_set(folder))
    assert captions_of(images)["img_000.png"] == "red, round" and captions_of(images)["img_001.png"] == 'say "hi"'


def test_files_saved_with_a_utf8_bom_are_read(folder: Path) -> None:
    (folder / "captions.csv").write_text("file,caption\nimg_000.png,café\n", encoding="utf-8-sig")
    (folder / "img_001.txt").write_text("a sidecar\n", encoding="utf-8-sig")
    images, _ = with_captions(scan_image_set(folder))
    assert captions_of(images)["img_000.png"] == "café" and captions_of(images)["img_001.png"] == "a sidecar"
    (folder / "captions.csv").unlink()
    (folder / "captions.jsonl").write_text(json.dumps({"file": "img_002.png", "caption": "jsonl"}) + "\n",
                                           encoding="utf-8-sig")
    images, _ = with_captions(scan_image_set(folder))
    assert captions_of(images)["img_002.png"] == "jsonl"
    (folder / "labels.csv").write_text("file,label\nimg_000.png,5\n", encoding="utf-8-sig")
    assert with_labels(scan_image_set(folder)).records[0].label == 5


def test_labels_csv_rows_must_match_the_header(folder: Path) -> None:
    (folder / "labels.csv").write_text("file,label\nimg_000.png,5,6\n")
    refusal = "labels.csv line 2 is malformed (3 fields where the header has 2)"
    with pytest.raises(InputProblem, match=re.escape(refusal)):
        with_labels(scan_image_set(folder))


def test_a_captions_file_that_is_not_utf8_is_refused(folder: Path) -> None:
    (folder / "captions.csv").write_bytes("file,caption\nimg_000.png,ok\nimg_001.png,café\n".encode("cp1252"))
    with pytest.raises(InputProblem, match=re.escape("captions.csv line 3 is not UTF-8 text; save the file as UTF-8.")):
        with_captions(scan_image_set(folder))


def test_a_sidecar_that_is_not_utf8_is_refused(folder: Path) -> None:
    (folder / "img_002.txt").write_bytes("une photo de café".encode("latin-1"))
    with pytest.raises(InputProblem, match=re.escape("img_002.txt line 1 is not UTF-8 text; save the file as UTF-8.")) \
            as refused:
        with_captions(scan_image_set(folder))
    assert refused.value.exit_code == 3
