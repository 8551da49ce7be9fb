"""Finding, validating, hashing and preprocessing images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdi_audit.errors import InputProblem
from cdi_audit.images import open_image, scan_image_set, to_model_pixels


def test_discovery_is_recursive_and_lists_what_it_skips(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "one.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "a" / "b" / "two.JPG")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / ".hidden.png")
    (tmp_path / "captions.csv").write_text("one.png,a red square\n")
    (tmp_path / "notes.docx").write_bytes(b"not an image")
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noisy.save(tmp_path / "full.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "full.png").read_bytes()[:2000])
    (tmp_path / "full.png").unlink()
    (tmp_path / "garbage.jpg").write_bytes(b"not a jpeg at all")
    images = scan_image_set(tmp_path)
    assert sorted(record.path.name for record in images.records) == ["one.png", "two.JPG"]
    reasons = {Path(item.path).name: item.reason for item in images.skipped}
    assert set(reasons) == {"notes.docx", "truncated.png", "garbage.jpg"}
    assert reasons["garbage.jpg"] == "not a readable image"
    assert reasons["truncated.png"].startswith("cannot be decoded")
    assert reasons["notes.docx"] == "unsupported file type '.docx'"
    expected_hash = hashlib.sha256((tmp_path / "one.png").read_bytes()).hexdigest()
    assert expected_hash in images.hashes


def test_strict_makes_a_bad_file_an_input_problem(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(InputProblem, match="bad.jpg"):
        scan_image_set(tmp_path, strict=True)


def test_a_repeated_file_counts_once(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    images = scan_image_set(tmp_path, strict=True)
    assert len(images) == 1
    assert images.skipped[0].reason.startswith("same file as")


def test_decompression_bombs_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    images = scan_image_set(tmp_path)
    assert len(images) == 0
    assert "decompression-bomb" in images.skipped[0].reason


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_gif_uses_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), (255, 255, 255)), Image.new("RGB", (8, 8), (0, 0, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert open_image(tmp_path / "anim.gif").getpixel((0, 0)) == (255, 255, 255)


def test_preprocessing_centre_crops_resizes_and_scales_to_minus_one_one() -> None:
    # 30 x 10: left third black, middle third white, right third black -> the centre crop is all white
    array = np.zeros((10, 30, 3), dtype=np.uint8)
    array[:, 10:20] = 255
    pixels = to_model_pixels(Image.fromarray(array), size=4)
    assert pixels.shape == (3, 4, 4) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, 1.0)
    grey = to_model_pixels(Image.new("RGB", (6, 6), (51, 102, 153)), size=6)
    np.testing.assert_allclose(grey[:, 0, 0], [51 / 127.5 - 1, 102 / 127.5 - 1, 153 / 127.5 - 1], rtol=1e-6)
