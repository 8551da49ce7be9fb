"""Options shared by the commands, declared once: their types, help texts, checks and environment variables."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cdi_audit.features.catalogue import features_help
from cdi_audit.models.adapters import Adapter
from cdi_audit.models.families import adapter_phrase, model_phrase, single_file_phrase, supported
from cdi_audit.models.single_file import SHIPPED
from cdi_audit.models.spec import ModelSpec
from cdi_audit.rules import DEFAULT_JOBS  # noqa: F401 (the commands' --jobs default)

FEATURES_HELP = features_help()
ENDPOINT_PANEL = "Black-box access (an image-to-image endpoint)"


class AccessChoice(str, Enum):
    auto = "auto"
    blackbox = "blackbox"


class FamilyChoice(str, Enum):
    pixel = "pixel"
    latent = "latent"


class ConditioningChoice(str, Enum):
    none = "none"
    text = "text"
    label = "class"


class TestChoice(str, Enum):
    permutation = "permutation"
    split = "split"


def report_formats_of(value: str | None) -> tuple[str, ...]:
    """'pdf,html' -> ("pdf", "html"); 'none' -> (); None (not given) -> both."""
    if value is None:
        from cdi_audit.report.files import REPORT_FORMATS

        return REPORT_FORMATS
    names = tuple(dict.fromkeys(name.strip().lower() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in ("pdf", "html", "none")]
    if unknown or not names or ("none" in names and len(names) > 1):
        raise typer.BadParameter(f"choose pdf, html, both as 'pdf,html', or none (got {value!r}).")
    return tuple(name for name in names if name != "none")


def check_report_formats(value: str | None) -> str | None:
    report_formats_of(value)
    return value


def require_out_for_reports(report_formats: str | None, out: Path | None) -> None:
    if report_formats is not None and out is None:
        raise typer.BadParameter("--report renders into an output folder; add --out DIR.", param_hint="--report")


ModelOption = Annotated[Path | None, typer.Option(
    "--model", "-m", metavar="PATH", show_default=False,
    help="The suspect model: a local diffusers pipeline folder saved with save_pretrained (safetensors): "
         f"{model_phrase()}. Not needed with --endpoint or --endpoint-cmd.")]
AccessOption = Annotated[AccessChoice, typer.Option(
    rich_help_panel=ENDPOINT_PANEL,
    help="'auto': use all a local model gives (weights, noise predictions); 'blackbox': use it only through "
         "image-to-image variations, as an endpoint would serve it.")]
EndpointOption = Annotated[str | None, typer.Option(
    metavar="URL", show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="Audit a model behind an HTTP endpoint speaking the cdi-audit-variation/1 protocol (see the README; "
         "'cdi-audit serve' is one). Completed calls are stored, so an interrupted audit resumes without "
         "repeating them.")]
EndpointCommandOption = Annotated[str | None, typer.Option(
    metavar="TEMPLATE", show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="Audit a model through a program, e.g. 'python vary.py {input} {output} {strength} {seed}': it reads "
         "the PNG {input} and writes the varied PNG {output}; {prompt} and {class_label} are also filled in. "
         "Run without a shell.")]
HeaderOption = Annotated[list[str] | None, typer.Option(
    metavar="'NAME: VALUE'", show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="HTTP header for every call (repeatable). Write secrets as ${ENV_VAR}, e.g. --header 'Authorization: "
         "Bearer ${API_KEY}' in single quotes: the value is read from the environment and never shown or saved.")]
EndpointTimeoutOption = Annotated[float, typer.Option(
    metavar="SECONDS", rich_help_panel=ENDPOINT_PANEL, help="Time limit of one call (at least 0.1).")]
RetriesOption = Annotated[int, typer.Option(
    metavar="N", rich_help_panel=ENDPOINT_PANEL,
    help="Retries of a failed call (network error, timeout, HTTP 429 or 5xx, an answer that is not an image) "
         "before the audit stops with exit code 4.")]
RetryBackoffOption = Annotated[float, typer.Option(
    metavar="SECONDS", rich_help_panel=ENDPOINT_PANEL,
    help="Wait before the first retry; it doubles with each next one (up to 60 s). Retry-After is honoured.")]
MaxRpsOption = Annotated[float | None, typer.Option(
    metavar="RATE", show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="At most this many calls per second (at least 0.001; default: no limit).")]
ImageSizeOption = Annotated[int | None, typer.Option(
    metavar="PIXELS", show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="Resolution the endpoint's model works at (at least 8); needed when the endpoint does not describe "
         "itself (GET).")]
EndpointFamilyOption = Annotated[FamilyChoice | None, typer.Option(
    show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="Whether the endpoint's model is a latent model (its variations are then compared with its own "
         "reconstruction of each image, a call at strength 0) or a pixel model; default: what the endpoint "
         "says, else latent.")]
EndpointConditioningOption = Annotated[ConditioningChoice | None, typer.Option(
    show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="What the endpoint's model is conditioned on: captions are sent as the prompt ('text'), class ids as "
         "class_label ('class'); default: what the endpoint says, else none.")]
AdapterOption = Annotated[list[str] | None, typer.Option(
    "--adapter", metavar="FILE[:SCALE]", show_default=False,
    help="A LoRA adapter (.safetensors, diffusers or kohya format) to fuse into --model, at SCALE (default 1.0); "
         "repeat for several, applied in order. Its sha256 and scale become part of the model's fingerprint. "
         f"For {adapter_phrase()}.")]
GuidanceOption = Annotated[float | None, typer.Option(
    metavar="VALUE", show_default=False,
    help=f"For a guidance-distilled model ({supported(lambda family: family.takes_guidance, 'or')}): the guidance "
         "value its denoiser is fed; when not given, its family's default (what LoRA trainers typically train "
         "with). Recorded in the report and part of the model's fingerprint; refused for models that take none.")]
AllowPickleOption = Annotated[bool, typer.Option(
    "--allow-pickle",
    help="Read --adapter files that are pickles (.pt, .bin, .ckpt) with torch.load(weights_only=True), which "
         "loads tensors but runs no code; without it they are refused. Models themselves must be safetensors.")]
NoCalibrationOption = Annotated[bool, typer.Option(
    "--no-calibration",
    help="With --adapter: score the adapted model's features alone, with the base as the control model. By "
         "default the scoring model also gets how much the adapter changed each image's features relative to "
         "the base, which removes each image's own difficulty.")]
ModelConfigOption = Annotated[Path | None, typer.Option(
    metavar="DIR|NAME", show_default=False,
    help=f"For {single_file_phrase()}: a shipped config ({', '.join(SHIPPED)}) or the pipeline folder of the same "
         "model holding its configs and tokenizers (weights not needed, but components the file lacks are read "
         "from it). Nothing is looked up online.")]
AlphaOption = Annotated[float, typer.Option(
    metavar="ALPHA", help="Significance level: 'evidence' needs p < alpha (between 0 and 0.5).")]
SeedOption = Annotated[int, typer.Option(metavar="INT",
                                         help="Seed for noise draws, folds and permutations (0 to 2**32 - 1).")]
DeviceOption = Annotated[str, typer.Option(
    envvar="CDI_AUDIT_DEVICE", metavar="DEVICE",
    help="'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")]
DtypeOption = Annotated[str, typer.Option(
    envvar="CDI_AUDIT_DTYPE", metavar="DTYPE",
    help="Precision of forward passes: 'auto' (bfloat16 or float16 on CUDA, float32 on CPU), 'float32', "
         "'bfloat16' or 'float16'. DDIM inversions always run in float32.")]
BatchSizeOption = Annotated[int, typer.Option(metavar="N", help="Images per model batch.")]
CompileOption = Annotated[bool, typer.Option(
    "--compile", help="Run the network through torch.compile: worth it for long GPU runs; the first batches wait "
                      "for the compilation (a minute or more), and features move only by float rounding.")]
MaxBatchGradOption = Annotated[int, typer.Option(
    metavar="N", help="Images per backward pass for gradient features (caps their memory).")]
CacheDirOption = Annotated[Path | None, typer.Option(
    envvar="CDI_AUDIT_CACHE_DIR", metavar="DIR", show_default=False,
    help="Feature cache folder (default: the user cache folder, e.g. ~/.cache/cdi-audit).")]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write cached features.")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print the result as one JSON object on stdout (nothing else goes to stdout).")]
StrictOption = Annotated[bool, typer.Option(
    "--strict", help="Stop (exit 3) on any unreadable or unsupported file instead of skipping it.")]
JobsOption = Annotated[int, typer.Option(
    metavar="N", help="Worker processes for the statistics (default: one per CPU core, at most 8).")]
CaptionOption = Annotated[str | None, typer.Option(
    metavar="TEXT", show_default=False,
    help="One caption for every image (text-to-image models). Otherwise captions come from NAME.txt beside "
         "each image or a captions.csv / captions.jsonl in the folder; images without one get the empty caption.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]


def require_one_model(model: Path | None, endpoint: str | None, endpoint_cmd: str | None,
                       access: AccessChoice) -> None:
    given = [name for name, value in (("--model", model), ("--endpoint", endpoint), ("--endpoint-cmd", endpoint_cmd))
             if value is not None]
    if len(given) != 1:
        raise typer.BadParameter(
            "give the suspect model as exactly one of --model PATH, --endpoint URL or --endpoint-cmd TEMPLATE"
            + (f" (got {' and '.join(given)})" if given else ""), param_hint="--model")
    if access is AccessChoice.blackbox and model is None:
        raise typer.BadParameter("--access blackbox is for a local --model; an endpoint gives black-box access "
                                 "anyway", param_hint="--access")


def adapters_of(values: list[str] | None, allow_pickle: bool = False) -> tuple[Adapter, ...]:
    """The --adapter values as adapters (their scales are checked by the adapter itself)."""
    return tuple(Adapter.parse(value, allow_pickle) for value in values or ())


def model_spec(model: Path | None, config: Path | None, adapters: list[str] | None, allow_pickle: bool,
               guidance: float | None = None) -> ModelSpec | None:
    """The model the --model, --model-config, --adapter, --allow-pickle and --guidance options name (None
    without --model, where an endpoint serves its own model and takes none of them: ``ModelSpec.named``)."""
    return ModelSpec.named(model, config=config, adapters=adapters_of(adapters, allow_pickle), guidance=guidance)
