"""The screen that decides the units of the test: framings that catch light crops, one image per group of
near-duplicates in an audit, and captions that still name the images the screen left out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.inputs.conditions import with_captions
from cdi_audit.inputs.image_statistics import FRAMING_TRIMS, describe_image, framing_views
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.verdict.screening import duplicate_groups, screen_near_duplicates


def smooth_picture(seed: int, side: int = 320) -> Image.Image:
    coarse = np.random.default_rng(seed).integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)


def test_a_framing_of_a_picture_is_the_layout_of_the_same_crop(tmp_path: Path) -> None:
    """Trimming 10% off the top and 5% off the left of a picture gives exactly one of its framings."""
    picture = smooth_picture(0)
    picture.save(tmp_path / "picture.png")
    picture.crop((16, 32, 320, 320)).save(tmp_path / "crop.png")  # left 16/320 = 5%, top 32/320 = 10%
    views = framing_views(describe_image(tmp_path / "picture.png").thumbnail[None])[0]
    crop = framing_views(describe_image(tmp_path / "crop.png").thumbnail[None])[0, 0]
    correlations = views @ crop
    trims = len(FRAMING_TRIMS)
    top, bottom, left, right = (FRAMING_TRIMS.index(value) for value in (0.10, 0.0, 0.05, 0.0))
    expected = (top * trims + bottom) * trims**2 + left * trims + right
    assert int(np.argmax(correlations)) == expected and correlations[expected] > 0.999
    assert correlations[0] < correlations[expected] - 0.01  # the untrimmed picture matches less well
    whole = framing_views(describe_image(tmp_path / "picture.png").thumbnail[None], whole_only=True)
    # The same view through another contraction order (einsum picks one per operator count): float32 rounding
    # of unit-norm entries, so an absolute tolerance (a relative one fails on entries near zero).
    np.testing.assert_allclose(whole[0], views[:1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(views, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(views.sum(axis=1), 0.0, atol=1e-5)


def folder_with_copies(root: Path, image_sets: tuple[Path, Path]) -> tuple[Path, Path, list[str]]:
    """The 12-image suspect set plus a JPEG re-encode of one image and a light crop of another."""
    suspect, reference = (Path(shutil.copytree(folder, root / name))
                          for folder, name in zip(image_sets, ("p", "u"), strict=True))
    first, second = sorted(suspect.glob("*.png"))[:2]
    with Image.open(first) as image:
        image.convert("RGB").save(suspect / "web_version.jpg", quality=92)
    with Image.open(second) as image:
        image.crop((1, 0, image.width, image.height - 1)).save(suspect / "trimmed.png")
    return suspect, reference, [first.name, second.name]


def test_an_audit_counts_a_group_of_near_duplicates_once(image_sets, tiny_model: Path, tmp_path: Path) -> None:
    suspect, reference, originals = folder_with_copies(tmp_path, image_sets)
    result = CliRunner().invoke(app, ["check", str(suspect), "--reference", str(reference), "--model",
                                      str(tiny_model), "--test", "split", "--json", "--no-cache",
                                      "--curve-resamples", "0"])
    payload = json.loads(result.stdout)
    assert result.exit_code in (0, 1, 5), result.stderr
    assert (payload["n_suspect"], payload["n_reference"]) == (12, 12)
    groups = {Path(group["kept_path"]).name: [Path(item["path"]).name for item in group["left_out"]]
              for group in payload["controls"]["duplicate_groups"]}
    assert groups == {originals[0]: ["web_version.jpg"], originals[1]: ["trimmed.png"]}
    tested = {Path(image["path"]).name for image in payload["images"]}
    assert "web_version.jpg" not in tested and "trimmed.png" not in tested and set(originals) <= tested
    pairs = payload["controls"]["near_duplicates"]
    assert len(pairs) == 2 and all(pair["removed"] and pair["first_role"] == pair["second_role"] == "suspect"
                                   for pair in pairs)
    assert any("count as one image each: 2 copies were left out" in warning for warning in payload["warnings"])
    assert "2 group(s) within a set, 2 copies left out" in " ".join(result.stderr.split())


def test_a_caption_row_for_an_image_the_screen_left_out_is_no_error(image_sets, tmp_path: Path) -> None:
    suspect, reference, originals = folder_with_copies(tmp_path, image_sets)
    rows = [f"{path.name},a caption of {path.name}" for path in sorted(suspect.iterdir()) if path.suffix != ".csv"]
    (suspect / "captions.csv").write_text("file,caption\n" + "\n".join(rows) + "\n")
    screened = screen_near_duplicates(scan_image_set(suspect), scan_image_set(reference))
    assert {record.path.name for record in screened.suspect.excluded} == {"web_version.jpg", "trimmed.png"}
    captioned, notes = with_captions(screened.suspect)
    assert notes == [] and len(captioned.records) == 12
    assert {record.path.name: record.caption for record in captioned.records}[originals[0]] == \
        f"a caption of {originals[0]}"


def test_groups_are_the_connected_components_of_the_pairs(tmp_path: Path) -> None:
    """A chain a-b, b-c is one group even though a and c were never paired; each group keeps its image with the
    most pixels, then the largest file; an image in no pair is in no group."""
    images = []
    for name, pixels, size in [("a", 100, 10), ("b", 400, 10), ("c", 400, 30), ("d", 900, 10), ("e", 100, 5),
                               ("f", 100, 6)]:
        path = tmp_path / f"{name}.png"
        path.write_bytes(b"x" * size)
        images.append(SimpleNamespace(role="suspect", pixels=pixels, record=SimpleNamespace(path=path)))
    a, b, c, d, e, f = images
    pairs = [SimpleNamespace(first=a, second=b), SimpleNamespace(first=c, second=b), SimpleNamespace(first=f, second=e)]
    groups = duplicate_groups(images, pairs)
    assert [(group.kept, set(map(id, group.left_out))) for group in groups] == [
        (c, {id(a), id(b)}), (f, {id(e)})]
    assert all(d is not group.kept and d not in group.left_out for group in groups)
