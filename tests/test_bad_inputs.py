"""A corpus of bad and awkward inputs: every one ends with its own exit code (never 0 or 1, which only a completed
audit may give), one line saying what is wrong, and no traceback.

Each case builds what it needs under a fresh folder and returns the command line; most fail before any model
work, so the corpus runs in seconds.
"""

from __future__ import annotations

import json
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


@case("captions.csv with an unquoted comma", 3, "line 2 is malformed")
def _(root, shared):
    suspect, _ = sets(root)
    (suspect / "captions.csv").write_text("file,caption\ns_000.png,red, round\n")
    return check(root, shared, model=shared["text_model"])


@case("captions.csv with an unterminated quote", 3, "line 2 is malformed")
def _(root, shared):
    suspect, _ = sets(root)
    (suspect / "captions.csv").write_text('file,caption\ns_000.png,"red\ns_001.png,blue\n')
    return check(root, shared, model=shared["text_model"])


@case("sidecar caption that is not UTF-8", 3, "s_000.txt")
def _(root, shared):
    suspect, _ = sets(root)
    (suspect / "s_000.txt").write_bytes("caf\xe9".encode("latin-1"))
    return check(root, shared, model=shared["text_model"])


@case("captions.csv naming a file that is not there", 3, "names 'nothing.png'")
def _(root, shared):
    suspect, _ = sets(root)
    (suspect / "captions.csv").write_text("file,caption\nnothing.png,a cat\n")
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


@case("--out that cannot be created", 2, "Cannot write into --out")
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


def refuse_permission(path: Path) -> str:
    raise PermissionError(13, "Permission denied", str(path))


@pytest.fixture(scope="module")
def shared_inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, sample_audit) -> dict:
    from tiny_pipelines import save_tiny_stable_diffusion

    text_model = save_tiny_stable_diffusion(tmp_path_factory.mktemp("text") / "sd")
    return {"model": tiny_model, "text_model": text_model, "audit_folder": sample_audit[2]}


def flat(text: str) -> str:
    """Output as one line: Rich wraps long lines and draws boxes around usage errors."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


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
    if errors:  # the tool's own message: one line (usage errors are Typer's box)
        assert len(errors) == 1 and len(result.stderr.strip().splitlines()[-1]) > 0
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
