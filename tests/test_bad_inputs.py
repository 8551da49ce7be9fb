"""A corpus of bad and awkward inputs: every one ends with its own exit code (never 0 or 1, which only a completed
audit may give), one line saying what is wrong, and no traceback.

Each case builds what it needs under a fresh folder and returns the command line; most fail before any model
work, so the corpus runs in seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA, write_images
from PIL import Image
from typer.testing import CliRunner

from cdi_audit.cli import app

Case = Callable[[Path, dict], list[str]]
VERDICT_LINE = re.compile(r"^(EVIDENCE|NO EVIDENCE|INCONCLUSIVE)\b|\"verdict\": \"", re.MULTILINE)
CASES: dict[str, tuple[int, str, Case]] = {}


def case(name: str, code: int, phrase: str):
    """Register a bad input: the exit code and a phrase of the one-line message it must give."""

    def register(build: Case) -> Case:
        CASES[name] = (code, phrase, build)
        return build

    return register


def sets(root: Path, count: int = 12) -> tuple[Path, Path]:
    """The suspect and reference folders under ``root``, written the first time they are asked for."""
    if not (root / "p").exists():
        write_images(root / "p", count, seed=1, prefix="s")
        write_images(root / "u", count, seed=2, prefix="r")
    return root / "p", root / "u"


def check(root: Path, shared: dict, *extra: str, model: Path | None = None) -> list[str]:
    suspect, reference = sets(root)
    return ["check", str(suspect), "--reference", str(reference), "--model", str(model or shared["model"]),
            "--cache-dir", str(root / "cache"), "--test", "split", "--curve-resamples", "0", *extra]


def edited_model(root: Path, shared: dict, part: str, file: str, **changes) -> Path:
    """A copy of the tiny model whose ``part/file`` config has ``changes``."""
    model = Path(shutil.copytree(shared["model"], root / "model"))
    path = model / part / file
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return model


# ---- folders and files ---------------------------------------------------------------------------------

@case("missing suspect folder", 3, "is not a folder")
def _(root, shared):
    return ["check", str(root / "absent"), "--reference", str(sets(root)[1]), "--model", str(shared["model"])]


@case("reference is a file", 3, "is not a folder")
def _(root, shared):
    (root / "u.png").write_bytes(b"x")
    return ["check", str(sets(root)[0]), "--reference", str(root / "u.png"), "--model", str(shared["model"])]


@case("too few images", 3, "needs at least 10")
def _(root, shared):
    write_images(root / "few", 5, seed=3)
    return ["check", str(root / "few"), "--reference", str(sets(root)[1]), "--model", str(shared["model"])]


@case("the same file in both sets", 3, "are in both")
def _(root, shared):
    suspect, reference = sets(root)
    shutil.copy(next(suspect.glob("*.png")), reference / "copy.png")
    return check(root, shared)


@case("unreadable image with --strict", 3, "cannot be read (PermissionError")
def _(root, shared):
    shared["monkeypatch"].setattr("cdi_audit.inputs.images.file_sha256", refuse_permission)
    return check(root, shared, "--strict")


@case("truncated image with --strict", 3, "cannot be decoded")
def _(root, shared):
    suspect, _ = sets(root)
    first = next(suspect.glob("*.png"))
    first.write_bytes(first.read_bytes()[:60])
    return check(root, shared, "--strict")


@case("16-bit image of unknown range with --strict", 3, "brightness scale is unknown")
def _(root, shared):
    suspect, _ = sets(root)
    Image.fromarray(np.full((20, 20), 3.0, dtype=np.float32), mode="F").save(suspect / "float.tif")
    return check(root, shared, "--strict")


@case("sidecar caption that is not UTF-8", 3, "s_000.txt")
def _(root, shared):
    suspect, _ = sets(root)
    (suspect / "s_000.txt").write_bytes("caf\xe9".encode("latin-1"))
    return check(root, shared, model=shared["text_model"])


@case("damaged cache chunk", 3, "cannot be read (BadZipFile")
def _(root, shared):
    arguments = check(root, shared)
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code in (0, 1, 5), result.output
    for chunk in (root / "cache").rglob("chunk-*.npz"):
        chunk.write_bytes(chunk.read_bytes()[:100])
    return arguments


# ---- options ------------------------------------------------------------------------------------------

for device in ("mps", "meta", "lazy"):
    case(f"--device {device}", 2, "--device")(lambda root, shared, device=device: check(root, shared, "--device",
                                                                                          device))


@case("--seed 2**64", 2, "--seed")
def _(root, shared):
    return check(root, shared, "--seed", str(2**64))


@case("--cache-dir naming a file", 2, "give a folder for --cache-dir")
def _(root, shared):
    (root / "cache-file").write_text("")
    arguments = check(root, shared)
    return [*arguments, "--cache-dir", str(root / "cache-file")]


@case("--out naming a file", 2, "is a file; give a folder")
def _(root, shared):
    (root / "out").write_text("")
    return check(root, shared, "--out", str(root / "out"))


@case("--out that cannot be created", 2, "Cannot write into the output folder")
def _(root, shared):
    (root / "file").write_text("")
    return check(root, shared, "--out", str(root / "file" / "out"))


@case("--out inside the suspect folder", 2, "lies inside the suspect folder")
def _(root, shared):
    return check(root, shared, "--out", str(root / "p" / "report"))


@case("--features that do not exist", 2, "--features")
def _(root, shared):
    return check(root, shared, "--features", "loss,telepathy")


@case("--alpha of 0", 2, "--alpha")
def _(root, shared):
    return check(root, shared, "--alpha", "0")


# ---- models -------------------------------------------------------------------------------------------

@case("model path that does not exist", 4, "the path does not exist")
def _(root, shared):
    return check(root, shared, model=root / "no-model")


@case("pickle checkpoint", 4, "pickle")
def _(root, shared):
    (root / "model.ckpt").write_bytes(b"\x80\x04")
    return check(root, shared, model=root / "model.ckpt")


for value in (0, -5, "abc", 40000):
    case(f"sample_size {value!r}", 4, "sample_size")(
        lambda root, shared, value=value: check(root, shared, model=edited_model(
            root, shared, "unet", "config.json", sample_size=value)))


@case("num_train_timesteps 0", 4, "num_train_timesteps")
def _(root, shared):
    return check(root, shared, model=edited_model(root, shared, "scheduler", "scheduler_config.json",
                                                  num_train_timesteps=0))


@case("weights that do not fit the config", 4, "do not fit unet/config.json")
def _(root, shared):
    return check(root, shared, model=edited_model(root, shared, "unet", "config.json",
                                                  block_out_channels=[16, 32, 64]))


# ---- failures inside a run ----------------------------------------------------------------------------

@case("out of memory", 4, "Ran out of memory (MemoryError)")
def _(root, shared):
    def exhausted(*args, **kwargs):
        filler = np.ones(1000)  # held by the traceback until the handler drops it  # noqa: F841
        raise MemoryError

    shared["monkeypatch"].setattr("cdi_audit.pipeline.audit.shift_check", exhausted)
    return check(root, shared)


@case("a bug", 70, "Internal error (ZeroDivisionError")
def _(root, shared):
    shared["monkeypatch"].setattr("cdi_audit.pipeline.audit.shift_check", lambda *args, **kwargs: 1 / 0)
    return check(root, shared)


@case("an endpoint that answers with no image", 4, "")
def _(root, shared):
    script = root / "vary.py"
    script.write_text("import sys\nopen(sys.argv[2], 'wb').write(b'not a png')\n")
    suspect, reference = sets(root)
    return ["check", str(suspect), "--reference", str(reference), "--endpoint-cmd",
            f"{sys.executable} {script} {{input}} {{output}}", "--image-size", "16", "--retries", "0",
            "--cache-dir", str(root / "cache")]


# ---- other commands -----------------------------------------------------------------------------------

@case("batch with a model path that does not exist", 2, "the model ")
def _(root, shared):
    suspect, reference = sets(root)
    (root / "audits.toml").write_text(f'[[audit]]\nname = "a"\nsuspect = "{suspect}"\nreference = "{reference}"\n'
                                      f'model = "{root / "no-model"}"\n')
    return ["batch", str(root / "audits.toml")]


@case("batch --out inside an audit's folder", 2, "lies inside the suspect folder of audit a")
def _(root, shared):
    suspect, reference = sets(root)
    (root / "audits.toml").write_text(f'[[audit]]\nname = "a"\nsuspect = "{suspect}"\nreference = "{reference}"\n'
                                      f'model = "{shared["model"]}"\n')
    return ["batch", str(root / "audits.toml"), "--out", str(suspect / "out")]


@case("verify after report.json was edited", 3, "")
def _(root, shared):
    folder = Path(shutil.copytree(shared["audit_folder"], root / "audit"))
    report = folder / "report.json"
    report.write_text(report.read_text().replace('"seed": 0', '"seed": 1', 1))
    return ["verify", str(folder)]


@case("verify of a file that is no manifest", 3, "is not a readable cdi-audit manifest")
def _(root, shared):
    (root / "manifest.json").write_text("{}")
    return ["verify", str(root / "manifest.json")]


@case("report into a file", 2, "is a file; give a folder")
def _(root, shared):
    (root / "out").write_text("")
    return ["report", str(shared["audit_folder"]), "--out", str(root / "out")]


@case("extract-evidence --out inside the suspect folder", 2, "lies inside the suspect folder")
def _(root, shared):
    suspect, _ = sets(root)
    return ["extract-evidence", str(suspect), "--model", str(shared["model"]), "--out", str(suspect / "found")]


@case("evaluate --out naming a file", 2, "is a file; give a folder")
def _(root, shared):
    suspect, reference = sets(root, 20)
    (root / "out").write_text("")
    return ["evaluate", "--members", str(suspect), "--nonmembers", str(reference), "--model", str(shared["model"]),
            "--out", str(root / "out")]


# ---- what the model sees besides pixels: the same rule for both sets (a verdict here would be wrong) --------

def suspect_file_case(name: str, code: int, phrase: str, file: str, content: str, model: str = "text_model"):
    """A case whose one bad input is a file written into the suspect folder, audited on a conditional model."""

    def build(root, shared):
        (sets(root)[0] / file).write_text(content)
        return check(root, shared, model=shared[model])

    case(name, code, phrase)(build)


for name, code, phrase, file, content in (
    ("captions.csv in the suspect folder only", 3, "do not come from the same kind of source", "captions.csv",
     "file,caption\n" + "".join(f"s_{i:03d}.png,a red circle\n" for i in range(12))),
    ('"caption": null in captions.jsonl', 3, "the caption is null, not text", "captions.jsonl",
     '{"file": "s_000.png", "caption": null}\n'),
    ("captions.csv giving one image two captions", 3, "lines 2 and 3 give s_000.png different captions",
     "captions.csv", "file,caption\ns_000.png,a cat\ns_000.png,a dog\n"),
    ("captions.jsonl nested 100,000 deep", 3, "nested too deeply", "captions.jsonl", "[" * 100_000 + "\n"),
    ("captions.csv with an unquoted comma", 3, "line 2 is malformed", "captions.csv",
     "file,caption\ns_000.png,red, round\n"),
    ("captions.csv with an unterminated quote", 3, "line 2 is malformed", "captions.csv",
     'file,caption\ns_000.png,"red\ns_001.png,blue\n'),
    ("captions.csv naming a file that is not there", 3, "names 'nothing.png'", "captions.csv",
     "file,caption\nnothing.png,a cat\n"),
):
    suspect_file_case(name, code, phrase, file, content)
suspect_file_case("labels.csv in the suspect folder only", 3, "class labels do not come from the same kind of source",
                  "labels.csv", "file,label\n" + "".join(f"s_{i:03d}.png,{i % 4}\n" for i in range(12)), "class_model")


@case("sidecar captions against a captions.csv", 3, "do not come from the same kind of source")
def _(root, shared):
    suspect, reference = sets(root)
    for image in suspect.glob("*.png"):
        image.with_suffix(".txt").write_text("a red circle")
    (reference / "captions.csv").write_text("file,caption\n" + "".join(f"r_{i:03d}.png,a red circle\n"
                                                                        for i in range(12)))
    return check(root, shared, model=shared["text_model"])


@case("captions in the reference folder only", 3, "the suspect set has none (0 of 12)")
def _(root, shared):
    _, reference = sets(root)
    for image in reference.glob("*.png"):
        image.with_suffix(".txt").write_text("a sketch")
    return check(root, shared, model=shared["text_model"])


@case("captions.csv naming an ambiguous bare name", 3, "which is ambiguous: 2 files")
def _(root, shared):
    suspect, _ = sets(root)
    (suspect / "a").mkdir()
    (suspect / "b").mkdir()
    shutil.move(suspect / "s_000.png", suspect / "a" / "x.png")
    shutil.move(suspect / "s_001.png", suspect / "b" / "x.png")
    (suspect / "captions.csv").write_text("file,caption\nx.png,a cat\n")
    return check(root, shared, model=shared["text_model"])


# ---- adapters ------------------------------------------------------------------------------------------

def lora_check(root: Path, *adapters: str) -> list[str]:
    suspect, reference = sets(root)
    return ["check", str(suspect), "--reference", str(reference), "--model", str(SAMPLE_DATA / "lora" / "base"),
            "--caption", "a photograph", "--cache-dir", str(root / "cache"), "--test", "split",
            "--curve-resamples", "0", *(value for adapter in adapters for value in ("--adapter", adapter))]


LORA = SAMPLE_DATA / "lora" / "published_style.safetensors"


@case("adapter with no tensors", 4, "holds no tensors")
def _(root, shared):
    from safetensors.torch import save_file

    save_file({}, root / "empty.safetensors")
    return lora_check(root, str(root / "empty.safetensors"))


for scale in ("0", "-1", "inf", "nan", "1e300"):
    case(f"adapter scale {scale}", 2, "the scale must be a number above 0 and at most 10")(
        lambda root, shared, scale=scale: lora_check(root, f"{LORA}:{scale}"))


@case("adapter FILE:abc", 2, "has 'abc' after its last ':' where a scale goes")
def _(root, shared):
    return lora_check(root, f"{LORA}:abc")


@case("adapter FILE:", 2, "has nothing after its last ':' where a scale goes")
def _(root, shared):
    return lora_check(root, f"{LORA}:")


@case("adapter FILE:1:2 (a file named FILE:1 that is not there)", 3, "published_style.safetensors:1")
def _(root, shared):
    return lora_check(root, f"{LORA}:1:2")


@case("adapter that is a folder", 3, "is a folder")
def _(root, shared):
    return lora_check(root, str(SAMPLE_DATA / "lora" / "base"))


@case("the same adapter twice", 2, "is given twice")
def _(root, shared):
    return lora_check(root, str(LORA), f"{LORA}:0.5")


# ---- settings: one rule book for the command line, batch files and Python --------------------------------

for option, value, phrase in (("--seed", "-1", "--seed must be a whole number from 0"),
                              ("--permutations", "-5", "--permutations must be a whole number of at least 1"),
                              ("--shift-alpha", "nan", "--shift-alpha must be a number from 0.001 to 0.5"),
                              ("--shift-alpha", "5", "--shift-alpha must be a number from 0.001 to 0.5"),
                              ("--curve-resamples", "-3", "--curve-resamples must be a whole number of at least 0"),
                              ("--batch-size", "0", "--batch-size must be a whole number of at least 1"),
                              ("--jobs", "0", "--jobs must be a whole number of at least 1"),
                              ("--dtype", "float8", "--dtype must be one of auto, float32"),
                              ("--alpha", "nan", "--alpha must be a number between 0 and 0.5")):
    case(f"{option} {value}", 2, phrase)(lambda root, shared, option=option, value=value: [
        *check(root, shared), option, value])


@case("--guidance 1e300", 2, "--guidance must be a number from 0 to 100")
def _(root, shared):
    return check(root, shared, "--guidance", "1e300", model=SAMPLE_DATA / "flow" / "flux")


@case("--guidance with an endpoint", 2, "--guidance describes a local model")
def _(root, shared):
    suspect, reference = sets(root)
    return ["check", str(suspect), "--reference", str(reference), "--endpoint-cmd", "vary {input} {output}",
            "--image-size", "16", "--guidance", "3"]


for option, value, phrase in (("--endpoint-timeout", "0", "--endpoint-timeout must be a number of at least 0.1"),
                              ("--retries", "-1", "--retries must be a whole number of at least 0"),
                              ("--image-size", "4", "--image-size must be a whole number of at least 8")):
    case(f"endpoint {option} {value}", 2, phrase)(lambda root, shared, option=option, value=value: [
        "check", str(sets(root)[0]), "--reference", str(sets(root)[1]), "--endpoint-cmd", "vary {input} {output}",
        "--image-size", "16", option, value])


@case("--no-calibration without an adapter", 2, "--no-calibration against the base applies to audits with")
def _(root, shared):
    return check(root, shared, "--no-calibration")


@case("evaluate with too few permutations", 2, "--permutations must be at least 100 for the 'images needed'")
def _(root, shared):
    suspect, reference = sets(root, 20)
    return ["evaluate", "--members", str(suspect), "--nonmembers", str(reference), "--model", str(shared["model"]),
            "--permutations", "50"]


@case("extract with a negative seed", 2, "--seed must be a whole number from 0")
def _(root, shared):
    suspect, reference = sets(root)
    return ["extract", str(suspect), str(reference), "--model", str(shared["model"]), "--seed", "-1",
            "--cache-dir", str(root / "cache")]


def batch_file(root: Path, shared: dict, extra: str, name: str = "audits.toml") -> list[str]:
    suspect, reference = sets(root)
    (root / name).write_text(f'[[audit]]\nname = "a"\nsuspect = "{suspect}"\nreference = "{reference}"\n'
                             f'model = "{shared["model"]}"\n{extra}\n')
    return ["batch", str(root / name), "--cache-dir", str(root / "cache")]


for extra, phrase in (("permutations = -5", "audit 1 (a): permutations must be a whole number of at least 1"),
                      ("permutations = -1", "audit 1 (a): permutations must be a whole number of at least 1"),
                      ("permutations = 50", "audit 1 (a): permutations must be at least 100 for alpha = 0.01"),
                      ("shift_alpha = 5", "audit 1 (a): shift_alpha must be a number from 0.001 to 0.5"),
                      ("shift_alpha = nan", "audit 1 (a): shift_alpha must be a number from 0.001 to 0.5"),
                      ("curve_resamples = -3", "audit 1 (a): curve_resamples must be a whole number of at least 0"),
                      ("seed = -1", "audit 1 (a): seed must be a whole number from 0"),
                      (f"seed = {2**64}", "audit 1 (a): seed must be a whole number from 0"),
                      ("guidance = nan", "audit 1 (a): guidance must be a number from 0 to 100"),
                      ('adapters = ["x.safetensors:inf"]', "x.safetensors: the scale must be a number above 0"),
                      ('permutations = "ten"', "audit 1 (a): permutations must be a whole number (got 'ten')"),
                      ("alpha = true", "audit 1 (a): alpha must be a number (got True)"),
                      ('test = "bogus"', "audit 1 (a): test must be 'permutation' or 'split', not 'bogus'")):
    case(f"batch {extra}", 2, phrase)(lambda root, shared, extra=extra: batch_file(root, shared, extra))


@case("batch file nested 100,000 deep", 2, "nests tables or lists more than 64 deep")
def _(root, shared):
    return batch_file(root, shared, "deep = " + "[" * 100_000 + "]" * 100_000)


# ---- the cache folder: checked before any model work ------------------------------------------------------

@case("--cache-dir under /proc", 2, "--cache-dir /proc/cdi-audit-cache cannot take files")
def _(root, shared):
    return [*check(root, shared), "--cache-dir", "/proc/cdi-audit-cache"]


@case("XDG_CACHE_HOME that cannot be written", 2, "(the default user cache folder; XDG_CACHE_HOME moves it)")
def _(root, shared):
    shared["monkeypatch"].setenv("XDG_CACHE_HOME", "/proc/cdi-audit-nowhere")
    suspect, reference = sets(root)
    return ["check", str(suspect), "--reference", str(reference), "--model", str(shared["model"]),
            "--test", "split", "--curve-resamples", "0"]


@case("a disk that fills during extraction", 2, "stopped taking files (No space left on device)")
def _(root, shared):
    def full(path, content):
        raise OSError(28, "No space left on device")

    shared["monkeypatch"].setattr("cdi_audit.cache.atomic_write", full)
    return check(root, shared)


# ---- flow models with malformed configs (exit 70 before) ----------------------------------------------------

def edited_flow(root: Path, family: str, part: str, file: str, **changes) -> Path:
    """A copy of the shipped tiny SD3 or Flux whose ``part/file`` config has ``changes``."""
    model = Path(shutil.copytree(SAMPLE_DATA / "flow" / family, root / family))
    path = model / part / file
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return model


for shift in (0, -1, 1e300):
    case(f"flow scheduler shift {shift:g}", 4, "shift is")(lambda root, shared, shift=shift: check(
        root, shared, "--caption", "a photograph", model=edited_flow(root, "sd3", "scheduler",
                                                                     "scheduler_config.json", shift=shift)))


@case("Flux sample_size with an odd latent side", 4, "the side must be even")
def _(root, shared):
    return check(root, shared, "--caption", "a photograph", model=edited_flow(
        root, "flux", "transformer", "config.json", sample_size=7))


# ---- model configs ---------------------------------------------------------------------------------------

@case("--model-config that does not exist", 4, "does not exist")
def _(root, shared):
    return check(root, shared, "--model-config", str(root / "absent"), model=SAMPLE_DATA / "flow" / "sd3")


@case("--model-config that is a file", 4, "is a file, not a folder")
def _(root, shared):
    (root / "config.json").write_text("{}")
    return check(root, shared, "--model-config", str(root / "config.json"), model=SAMPLE_DATA / "flow" / "sd3")


# ---- the chain of custody: a folder that changed never verifies, a tampered report is never rendered ---------

def audit_copy(root: Path, shared: dict) -> Path:
    return Path(shutil.copytree(shared["audit_folder"], root / "audit"))


@case("verify after scores.csv was edited", 3, "changed output scores.csv")
def _(root, shared):
    folder = audit_copy(root, shared)
    (folder / "scores.csv").write_text((folder / "scores.csv").read_text().replace("suspect", "reference", 1))
    return ["verify", str(folder)]


@case("verify after a figure was deleted", 3, "missing output")
def _(root, shared):
    folder = audit_copy(root, shared)
    next(folder.glob("*.png")).unlink()
    return ["verify", str(folder)]


@case("verify of a half-written folder (no manifest)", 3, "manifest.json")
def _(root, shared):
    folder = audit_copy(root, shared)
    (folder / "manifest.json").unlink()
    return ["verify", str(folder)]


@case("report of a tampered report.json", 3, "report.json")
def _(root, shared):
    folder = audit_copy(root, shared)
    report = folder / "report.json"
    report.write_text(report.read_text().replace('"verdict": "evidence"', '"verdict": "no_evidence"', 1))
    return ["report", str(folder)]


@case("report.json of another schema version", 3, "schema version")
def _(root, shared):
    folder = audit_copy(root, shared)
    report = json.loads((folder / "report.json").read_text())
    (root / "old").mkdir()
    (root / "old" / "report.json").write_text(json.dumps({**report, "schema_version": "1"}))
    return ["report", str(root / "old"), "--force"]


# ---- file names that look like markup -------------------------------------------------------------------

@case("an unreadable file named :fire:.png with --strict", 3, ":fire:.png")
def _(root, shared):
    suspect, _ = sets(root)
    (suspect / ":fire:.png").write_bytes(b"not a png")
    return check(root, shared, "--strict")


@case("a FIFO named like an image with --strict", 3, "not a regular file (a FIFO)")
def _(root, shared):
    import os

    suspect, _ = sets(root)
    os.mkfifo(suspect / "pipe.png")
    return check(root, shared, "--strict")


def refuse_permission(path: Path) -> str:
    raise PermissionError(13, "Permission denied", str(path))


@pytest.fixture(scope="module")
def shared_inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, sample_audit) -> dict:
    from tiny_pipelines import save_tiny_dit, save_tiny_stable_diffusion

    text_model = save_tiny_stable_diffusion(tmp_path_factory.mktemp("text") / "sd")
    class_model = save_tiny_dit(tmp_path_factory.mktemp("class") / "dit")
    return {"model": tiny_model, "text_model": text_model, "class_model": class_model,
            "audit_folder": sample_audit[2]}


def flat(text: str) -> str:
    """Output as one line: Rich wraps long lines and draws boxes around usage errors."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 100  # 40 before the rule book, the caption rule and the custody checks


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_input_gives_its_exit_code_and_one_line(name: str, shared_inputs: dict, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, phrase, build = CASES[name]
    arguments = build(tmp_path, {**shared_inputs, "monkeypatch": monkeypatch})
    result = CliRunner().invoke(app, [*arguments, "--json"] if arguments[0] == "check" else arguments)
    output = result.stdout + result.stderr
    assert result.exit_code == code, output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    assert phrase in flat(output), output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    # The tool's own message is one line; only Typer's own parsing errors (a value of the wrong type) are its box.
    assert len(errors) == 1 or (code == 2 and not errors and "Usage:" in result.stderr) or (
        arguments[0] == "verify" and "NOT VERIFIED" in result.stderr), output
    assert not VERDICT_LINE.search(output), output  # a failure never prints a verdict
    if arguments[0] == "check" and errors:
        assert json.loads(result.stdout.splitlines()[-1])["error"]["exit_code"] == code


OUT_OF_MEMORY_RUN = """
import resource, sys
import numpy as np
import cdi_audit.pipeline.audit
from cdi_audit.cli import main

def exhaust(*args, **kwargs):
    held = []  # stays referenced from the traceback's frame until the handler drops it
    while True:
        held.append(np.empty(64 * 1024 * 1024))  # address space, not pages: fills the limit at once

cdi_audit.pipeline.audit.shift_check = exhaust
resource.setrlimit(resource.RLIMIT_AS, (6 * 1024**3, 6 * 1024**3))
sys.argv = ["cdi-audit", *sys.argv[1:]]
main()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the address-space limit (RLIMIT_AS) is Linux's")
def test_running_out_of_memory_for_real_exits_4_not_1(image_sets, tmp_path: Path) -> None:
    """The memory stays full until the handler has dropped the traceback: reporting must still work."""
    import subprocess

    suspect, reference = image_sets
    ran = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_RUN, "check", str(suspect), "--reference",
                          str(reference), "--model", str(SAMPLE_DATA / "model"), "--no-cache", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 4, ran.stderr[-2000:]
    assert json.loads(ran.stdout)["error"]["message"].startswith("Ran out of memory (MemoryError)")
    assert "Traceback" not in ran.stderr
