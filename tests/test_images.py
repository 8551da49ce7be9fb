"""Finding, validating, hashing and preprocessing images."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cdi_audit.inputs.images as images_module
from cdi_audit.errors import InputProblem
from cdi_audit.inputs.images import SkippedFile, open_image, scan_image_set, to_model_pixels


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


def _png_bytes(width: int, height: int, colour_type: int, rows: bytes) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit grey with alpha)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# 0 -> 0, 128 * 257 -> 128, 65535 -> 255, and rounding either side of 10.5 * 257
SIXTEEN_BIT = np.array([[0, 32896, 65535, 2698, 2699]], dtype=np.uint16)
EIGHT_BIT = [0, 128, 255, 10, 11]


@pytest.mark.parametrize("name", ["grey16.png", "grey16.tif"])
def test_sixteen_bit_greyscale_is_scaled_to_eight_bits_not_clipped(tmp_path: Path, name: str) -> None:
    Image.fromarray(SIXTEEN_BIT).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode.startswith("I;16")
    rgb = np.asarray(open_image(tmp_path / name))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    assert rgb[0, :, 0].tolist() == EIGHT_BIT and (rgb == rgb[..., :1]).all()
    mid_grey = tmp_path / ("mid" + name[6:])
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(mid_grey)
    assert np.asarray(open_image(mid_grey)).mean() == 128.0
    np.testing.assert_allclose(to_model_pixels(open_image(mid_grey), 4), 128 / 127.5 - 1, atol=1e-6)


def test_big_endian_and_32_bit_containers_of_16_bit_grey_are_scaled(tmp_path: Path) -> None:
    Image.frombytes("I;16B", (5, 1), SIXTEEN_BIT.astype(">u2").tobytes()).save(tmp_path / "big_endian.tif")
    Image.fromarray(SIXTEEN_BIT.astype(np.int32)).save(tmp_path / "as_int32.tif")
    assert Image.open(tmp_path / "big_endian.tif").mode == "I;16B" and Image.open(tmp_path / "as_int32.tif").mode == "I"
    for name in ("big_endian.tif", "as_int32.tif"):
        assert np.asarray(open_image(tmp_path / name))[0, :, 1].tolist() == EIGHT_BIT


def test_sixteen_bit_greyscale_with_alpha_is_scaled(tmp_path: Path) -> None:
    rows = b"".join(b"\x00" + struct.pack(">HH", 32896, 65535) * 4 for _ in range(4))
    (tmp_path / "grey_alpha16.png").write_bytes(_png_bytes(4, 4, 4, rows))
    assert np.asarray(open_image(tmp_path / "grey_alpha16.png")).tolist() == [[[128, 128, 128]] * 4] * 4


def test_float_tiffs_in_zero_one_are_scaled_by_255(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    assert np.asarray(open_image(tmp_path / "float.tif"))[0, :, 2].tolist() == [0, 128, 255, 64]
    assert len(scan_image_set(tmp_path, strict=True)) == 1


def test_pixel_values_of_unknown_scale_are_skipped_with_the_reason(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    Image.fromarray(np.full((4, 4), 3.0, dtype=np.float32)).save(tmp_path / "three.tif")
    Image.fromarray(np.array([[0.5, np.nan]], dtype=np.float32)).save(tmp_path / "nan.tif")
    Image.fromarray(np.array([[0, 100000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    Image.fromarray(np.array([[-5, 7]], dtype=np.int32)).save(tmp_path / "negative.tif")
    images = scan_image_set(tmp_path)
    assert [record.path.name for record in images.records] == ["good.png"]
    reasons = {Path(item.path).name: item.reason for item in images.skipped}
    assert reasons["three.tif"] == ("float pixel values from 3 to 3 are outside [0, 1], so their brightness scale is "
                                    "unknown; save the image as 8- or 16-bit")
    assert reasons["nan.tif"].startswith("float pixel values include NaN or infinity")
    assert reasons["wide.tif"].startswith("integer pixel values from 0 to 100000 do not fit 16 bits")
    assert reasons["negative.tif"].startswith("integer pixel values from -5 to 7 do not fit 16 bits")
    for name in ("nan.tif", "negative.tif"):  # the strict error names the first bad file in path order
        (tmp_path / name).unlink()
    with pytest.raises(InputProblem, match=r"three\.tif: float pixel values from 3 to 3 are outside \[0, 1\]"):
        scan_image_set(tmp_path, strict=True)


def test_a_file_that_cannot_be_read_is_skipped_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "fine.png")
    Image.new("RGB", (8, 8), (4, 5, 6)).save(tmp_path / "locked.png")
    real_sha256 = images_module.file_sha256

    def denying_sha256(path: Path) -> str:
        if path.name == "locked.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_sha256(path)

    monkeypatch.setattr(images_module, "file_sha256", denying_sha256)
    images = scan_image_set(tmp_path)
    assert [record.path.name for record in images.records] == ["fine.png"]
    assert images.skipped == [SkippedFile(str(tmp_path / "locked.png"),
                                          f"cannot be read (PermissionError: [Errno 13] Permission denied: "
                                          f"'{tmp_path / 'locked.png'}')")]
    with pytest.raises(InputProblem, match=r"locked\.png: cannot be read \(PermissionError") as refused:
        scan_image_set(tmp_path, strict=True)
    assert refused.value.exit_code == 3


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission_is_skipped(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "locked.png")
    (tmp_path / "locked.png").chmod(0)
    try:
        images = scan_image_set(tmp_path)
    finally:
        (tmp_path / "locked.png").chmod(0o644)
    assert len(images) == 0 and images.skipped[0].reason.startswith("cannot be read (PermissionError:")


def test_images_far_smaller_than_the_model_resolution_are_warned_about(tmp_path: Path) -> None:
    from cdi_audit.inputs.images import small_images_note

    Image.new("RGB", (40, 15), (9, 9, 9)).save(tmp_path / "thin.png")  # shorter side 15 < 32 / 2
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / "half.png")  # exactly half: not far smaller
    records = scan_image_set(tmp_path).records
    note = small_images_note(records, 32)
    assert note is not None and note.startswith("1 of 2 images (e.g. thin.png) are smaller than half")
    assert small_images_note(records, 30) is None


def scan_within(seconds: float, root: Path, strict: bool = False):
    """``scan_image_set(root)``, failing the test instead of hanging when the scan blocks (opening a FIFO does)."""
    outcome: dict[str, object] = {}

    def scan() -> None:
        try:
            outcome["images"] = scan_image_set(root, strict=strict)
        except InputProblem as error:
            outcome["error"] = error

    worker = threading.Thread(target=scan, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in (path for path in root.rglob("*") if path.is_fifo()):  # unblock a reader stuck in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"scanning {root} did not return within {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["images"]


def test_linked_sub_folders_are_followed(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "set" / "one.png")
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "elsewhere" / "two.png")
    (tmp_path / "set" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    images = scan_within(10, tmp_path / "set")
    assert [record.path for record in images.records] == [tmp_path / "set" / "linked" / "two.png",
                                                           tmp_path / "set" / "one.png"]
    assert images.skipped == []


def test_a_folder_reached_twice_is_scanned_once_and_a_link_loop_ends(tmp_path: Path) -> None:
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "a" / "img.png")
    (root / "a" / "back").symlink_to(root, target_is_directory=True)  # a loop: set/a/back/a/back/...
    (root / "b").symlink_to(root / "a", target_is_directory=True)  # a second path to set/a
    images = scan_within(10, root, strict=True)  # a repeated folder loses nothing, so strict does not refuse it
    assert [record.path for record in images.records] == [root / "a" / "img.png"]
    assert images.skipped == [SkippedFile(str(root / "a" / "back"), f"same folder as {root}"),
                              SkippedFile(str(root / "b"), f"same folder as {root / 'a'}")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifos_devices_and_broken_links_are_listed_as_skipped_and_never_opened(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "good.png")
    os.mkfifo(tmp_path / "x.png")
    (tmp_path / "null.png").symlink_to("/dev/null")
    (tmp_path / "broken.png").symlink_to(tmp_path / "missing.png")
    images = scan_within(10, tmp_path)
    assert [record.path.name for record in images.records] == ["good.png"]
    assert {Path(item.path).name: item.reason for item in images.skipped} == {
        "x.png": "not a regular file (a FIFO)",
        "null.png": "not a regular file (a character device)",
        "broken.png": "a symbolic link that cannot be followed (No such file or directory)",
    }
    with pytest.raises(InputProblem, match=r"3 file\(s\) .* \(first: .*broken\.png: a symbolic link") as refused:
        scan_within(10, tmp_path, strict=True)
    assert refused.value.exit_code == 3
