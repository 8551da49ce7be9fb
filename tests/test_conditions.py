"""Captions and class labels from the files users keep beside their images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_images

from cdi_audit.errors import InputProblem
from cdi_audit.inputs.conditions import require_alike, with_captions, with_conditions, with_labels
from cdi_audit.inputs.images import ImageSet, scan_image_set


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
    # a JSON null must not become the caption "None", nor a number or a list their text
    ("captions.jsonl", '{"file": "img_000.png", "caption": null}\n',
     "captions.jsonl line 1 is malformed (the caption is null, not text); leave the entry out for an image with no "
     "caption."),
    ("captions.jsonl", '{"file": "img_000.png", "caption": "ok"}\n{"file": "img_001.png", "caption": 3}\n',
     "captions.jsonl line 2 is malformed (the caption is 3, not text)"),
    ("captions.jsonl", '{"file": "img_000.png", "caption": ["a", "b"]}\n',
     "captions.jsonl line 1 is malformed (the caption is a list, not text)"),
    ("captions.jsonl", '{"file": "img_000.png", "caption": "ok"}\n' + "[" * 100_000 + "\n",
     "captions.jsonl line 2 is malformed (it is nested too deeply to read); fix or remove the file."),
    ("captions.csv", "file,caption\nimg_000.png,red\nimg_001.png,blue\nimg_000.png,green\n",
     "captions.csv lines 2 and 4 give img_000.png different captions ('red' and 'green'); keep the one you mean."),
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


def sources_of(images) -> dict[str, str]:
    return {record.path.name: record.condition_source for record in images.records}


def test_each_caption_keeps_where_it_came_from(folder: Path) -> None:
    (folder / "img_000.txt").write_text("a sidecar caption\n")
    (folder / "captions.csv").write_text("file,caption\nimg_001.png,from the csv\nimg_002.png,\n")
    images, _ = with_captions(scan_image_set(folder))
    # an empty caption is no caption, wherever it was written
    assert sources_of(images) == {"img_000.png": "sidecar", "img_001.png": "captions.csv", "img_002.png": "none",
                                  "img_003.png": "none"}
    assert images.condition_sources == ("sidecar", "captions.csv", "none", "none")
    everything, _ = with_conditions(scan_image_set(folder), "text", caption="a photo")
    assert everything.condition_sources == ("--caption",) * 4
    (folder / "captions.csv").unlink()
    (folder / "captions.jsonl").write_text(json.dumps({"file": "img_003.png", "caption": "from jsonl"}) + "\n")
    assert with_captions(scan_image_set(folder))[0].condition_sources == ("sidecar", "none", "none", "captions.jsonl")
    assert scan_image_set(folder).condition_sources == ("none",) * 4


def test_each_label_keeps_where_it_came_from_and_must_be_a_class_id(tmp_path: Path) -> None:
    write_images(tmp_path / "set" / "5", 2, seed=1, prefix="a")
    write_images(tmp_path / "set", 2, seed=2, prefix="b")
    (tmp_path / "set" / "labels.csv").write_text("file,label\n5/a_001.png,07\nb_000.png,2\n")
    images = with_labels(scan_image_set(tmp_path / "set"))
    assert {r.path.name: (r.label, r.condition_source) for r in images.records} == {
        "a_000.png": (5, "sub-folder"), "a_001.png": (7, "labels.csv"), "b_000.png": (2, "labels.csv"),
        "b_001.png": (None, "none")}
    for label, shown in [("-1", '"-1"'), ("x", '"x"'), ("", '""'), ("3.0", '"3.0"')]:
        (tmp_path / "set" / "labels.csv").write_text(f"file,label\nb_000.png,2\nb_001.png,{label}\n")
        with pytest.raises(InputProblem) as refused:
            with_labels(scan_image_set(tmp_path / "set"))
        assert str(refused.value) == (f"{tmp_path / 'set' / 'labels.csv'} line 3 is malformed (the label {shown} is "
                                      "not a class id, a whole number such as 3); give the class id in digits, or "
                                      "leave the entry out for an image with no label.")
        assert refused.value.exit_code == 3


def test_duplicate_rows_must_agree_but_may_repeat(folder: Path) -> None:
    (folder / "captions.csv").write_text("file,caption\nimg_000.png,red\nimg_000.png,red\n")
    assert captions_of(with_captions(scan_image_set(folder))[0])["img_000.png"] == "red"
    (folder / "captions.csv").unlink()
    (folder / "labels.csv").write_text("file,label\nimg_001.png,3\nimg_002.png,4\nimg_001.png,03\nimg_001.png,5\n")
    with pytest.raises(InputProblem, match=re.escape(
            "labels.csv lines 2 and 5 give img_001.png different labels ('3' and '5'); keep the one you mean.")) \
            as refused:
        with_labels(scan_image_set(folder))
    assert refused.value.exit_code == 3


def test_a_bare_name_shared_by_files_in_two_sub_folders_is_ambiguous(tmp_path: Path) -> None:
    write_images(tmp_path / "set" / "a", 1, seed=1, prefix="img")
    write_images(tmp_path / "set" / "b", 1, seed=2, prefix="img")
    (tmp_path / "set" / "captions.csv").write_text("file,caption\nimg_000.png,which one\n")
    with pytest.raises(InputProblem) as refused:
        with_captions(scan_image_set(tmp_path / "set"))
    assert str(refused.value) == (
        f"{tmp_path / 'set' / 'captions.csv'} line 2 names 'img_000.png', which is ambiguous: 2 files in "
        f"{tmp_path / 'set'} have that name; give the path relative to the folder (e.g. 'a/img_000.png').")
    assert refused.value.exit_code == 3
    (tmp_path / "set" / "captions.csv").write_text("file,caption\na/img_000.png,this one\n")
    images, _ = with_captions(scan_image_set(tmp_path / "set"))
    assert {r.path.relative_to(tmp_path / "set").as_posix(): r.caption for r in images.records} == {
        "a/img_000.png": "this one", "b/img_000.png": ""}


@pytest.fixture
def two_sets(tmp_path: Path) -> tuple[Path, Path]:
    write_images(tmp_path / "suspect", 4, seed=1, prefix="p")
    write_images(tmp_path / "reference", 4, seed=2, prefix="u")
    return tmp_path / "suspect", tmp_path / "reference"


def write_captions_csv(folder: Path, names: list[str]) -> None:
    (folder / "captions.csv").write_text("file,caption\n" + "".join(f"{name},a caption of {name}\n" for name in names))


def captioned(folder: Path, caption: str | None = None):
    return with_captions(scan_image_set(folder), caption)[0]


def test_a_captioned_suspect_set_against_an_uncaptioned_reference_is_refused(two_sets: tuple[Path, Path]) -> None:
    suspect, reference = two_sets
    write_captions_csv(suspect, [f"p_{i:03d}.png" for i in range(4)])
    with pytest.raises(InputProblem) as refused:
        require_alike([("suspect", captioned(suspect)), ("reference", captioned(reference))])
    assert str(refused.value) == (
        "The sets' captions do not come from the same kind of source: the suspect set's captions come from "
        "captions.csv (4 of 4 images), the reference set has none (0 of 4); the model would see the sets under "
        "different rules, which alone can look like evidence, so caption both sets the same way or give one "
        "--caption for all.")
    assert refused.value.exit_code == 3
    # one caption for all: both sets share the rule
    require_alike([("suspect", captioned(suspect, "a photo")), ("reference", captioned(reference, "a photo"))])


def test_captions_from_different_kinds_of_source_are_refused(two_sets: tuple[Path, Path]) -> None:
    suspect, reference = two_sets
    write_captions_csv(suspect, [f"p_{i:03d}.png" for i in range(3)])
    (suspect / "p_003.txt").write_text("a sidecar\n")
    for i in range(4):
        (reference / f"u_{i:03d}.txt").write_text(f"sketch {i}\n")
    with pytest.raises(InputProblem, match=re.escape(
            "the suspect set's captions come from sidecar .txt files (1 of 4 images) and captions.csv (3 of 4 images), "
            "the reference set's captions come from sidecar .txt files (4 of 4 images); the model")):
        require_alike([("suspect", captioned(suspect)), ("reference", captioned(reference))])


def test_the_same_kind_of_source_with_different_coverage_passes(two_sets: tuple[Path, Path]) -> None:
    suspect, reference = two_sets
    write_captions_csv(suspect, [f"p_{i:03d}.png" for i in range(4)])
    write_captions_csv(reference, [f"u_{i:03d}.png" for i in range(3)])
    sets = [("suspect", captioned(suspect)), ("reference", captioned(reference))]
    assert [images.condition_sources.count("none") for _, images in sets] == [0, 1]
    require_alike(sets)  # the shift check's caption statistics judge coverage
    require_alike([("suspect", scan_image_set(suspect)), ("reference", scan_image_set(reference))])
    require_alike([sets[0], ("reference", ImageSet(reference, []))])  # an empty set feeds the model nothing


def test_labels_from_a_csv_against_class_folders_or_none_are_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "members", 2, seed=1, prefix="m")
    (tmp_path / "members" / "labels.csv").write_text("file,label\nm_000.png,1\nm_001.png,2\n")
    write_images(tmp_path / "non_members" / "1", 2, seed=2, prefix="n")
    write_images(tmp_path / "unlabelled", 2, seed=3, prefix="u")
    members, folders, unlabelled = (with_labels(scan_image_set(tmp_path / name))
                                    for name in ("members", "non_members", "unlabelled"))
    with pytest.raises(InputProblem) as refused:
        require_alike([("members", members), ("non-members", folders)])
    assert str(refused.value) == (
        "The sets' class labels do not come from the same kind of source: the members set's class labels come from "
        "labels.csv (2 of 2 images), the non-members set's class labels come from class sub-folders (2 of 2 "
        "images); the model would see the sets under different rules, which alone can look like evidence, so label "
        "both sets the same way (a labels.csv in each, or class sub-folders in each).")
    with pytest.raises(InputProblem, match=re.escape("the non-members set has none (0 of 2); the model")) as refused:
        require_alike([("members", members), ("non-members", unlabelled)])
    assert refused.value.exit_code == 3
