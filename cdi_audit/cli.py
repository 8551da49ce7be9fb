"""The ``cdi-audit`` command line: parses options, calls the stages, chooses the exit code.

Exit codes (a CI job can branch on them): 0 no evidence, 1 evidence, 2 usage
error, 3 input problem, 4 model cannot be loaded, 5 inconclusive, 70 internal
error (a bug; never a finding), 130 interrupted.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from cdi_audit import __version__
from cdi_audit.console import StageProgress, stderr_console
from cdi_audit.errors import VERDICT_EXIT_CODES, AuditError, ExitCode
from cdi_audit.settings_checks import alpha_problem, permutations_problem

if TYPE_CHECKING:
    from cdi_audit.sharding import Launch, Shard

DEFAULT_JOBS = min(8, os.cpu_count() or 1)
INTERNAL_ERROR = 70
INTERRUPTED = 130
FEATURES_HELP = (
    "Feature preset or a comma-separated list of extractor names. 'auto' is 'fast' for a model at hand and "
    "'blackbox' for an endpoint. 'fast' (grey-box: loss, multi_loss, secmi, pia/pian; 14 columns, 29 model calls "
    "per image); 'full' (white-box: fast + gradient_masking, noise_optim; 26 columns, about 57 model calls and 18 "
    "backward passes per image); 'blackbox' (rediffuse: 3 columns, 10 image-to-image calls per image, 3 on "
    "latent models)."
)
ENDPOINT_PANEL = "Black-box access (an image-to-image endpoint)"
app = typer.Typer(
    help="Test whether a diffusion model was trained on your images (CDI dataset inference).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cdi-audit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Test whether a diffusion model was trained on your images (CDI dataset inference).

    Exit codes: 0 no evidence, 1 evidence, 2 usage error, 3 input problem,
    4 model cannot be loaded, 5 inconclusive, 70 internal error.
    """


def _check_alpha(value: float) -> float:
    problem = alpha_problem(value)
    if problem is not None:
        raise typer.BadParameter(problem)
    return value


def _check_features(value: str) -> str:
    from cdi_audit.features.registry import resolve_extractors

    try:
        resolve_extractors(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    return value


def _report_formats(value: str | None) -> tuple[str, ...]:
    """'pdf,html' -> ("pdf", "html"); 'none' -> (); None (not given) -> both."""
    if value is None:
        from cdi_audit.report.files import REPORT_FORMATS

        return REPORT_FORMATS
    names = tuple(dict.fromkeys(name.strip().lower() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in ("pdf", "html", "none")]
    if unknown or not names or ("none" in names and len(names) > 1):
        raise typer.BadParameter(f"choose pdf, html, both as 'pdf,html', or none (got {value!r}).")
    return tuple(name for name in names if name != "none")


def _check_report_formats(value: str | None) -> str | None:
    _report_formats(value)
    return value


def _require_out_for_reports(report_formats: str | None, out: Path | None) -> None:
    if report_formats is not None and out is None:
        raise typer.BadParameter("--report renders into an output folder; add --out DIR.", param_hint="--report")


def _check_device(value: str) -> str:
    from cdi_audit.targets.loading import resolve_device

    try:
        resolve_device(value)
    except (RuntimeError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    return value


def _check_dtype(value: str) -> str:
    if value not in ("auto", "float32", "bfloat16", "float16"):
        raise typer.BadParameter("choose auto, float32, bfloat16 or float16.")
    return value


ModelOption = Annotated[Path | None, typer.Option(
    "--model", "-m", metavar="PATH", show_default=False,
    help="The suspect model: a local diffusers pipeline folder saved with save_pretrained (safetensors): "
         "a pixel DDPM/DDIM, LDM, DiT or Stable Diffusion 1.x/2.x pipeline; or a Stable Diffusion single-file "
         ".safetensors checkpoint with --model-config. Not needed with --endpoint or --endpoint-cmd.")]
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
    min=0.1, metavar="SECONDS", rich_help_panel=ENDPOINT_PANEL, help="Time limit of one call.")]
RetriesOption = Annotated[int, typer.Option(
    min=0, metavar="N", rich_help_panel=ENDPOINT_PANEL,
    help="Retries of a failed call (network error, timeout, HTTP 429 or 5xx, an answer that is not an image) "
         "before the audit stops with exit code 4.")]
RetryBackoffOption = Annotated[float, typer.Option(
    min=0.0, metavar="SECONDS", rich_help_panel=ENDPOINT_PANEL,
    help="Wait before the first retry; it doubles with each next one (up to 60 s). Retry-After is honoured.")]
MaxRpsOption = Annotated[float | None, typer.Option(
    min=0.001, metavar="RATE", show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="At most this many calls per second (default: no limit).")]
ImageSizeOption = Annotated[int | None, typer.Option(
    min=8, metavar="PIXELS", show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="Resolution the endpoint's model works at; needed when the endpoint does not describe itself (GET).")]
EndpointFamilyOption = Annotated[FamilyChoice | None, typer.Option(
    show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="Whether the endpoint's model is a latent model (its variations are then compared with its own "
         "reconstruction of each image, a call at strength 0) or a pixel model; default: what the endpoint "
         "says, else latent.")]
EndpointConditioningOption = Annotated[ConditioningChoice | None, typer.Option(
    show_default=False, rich_help_panel=ENDPOINT_PANEL,
    help="What the endpoint's model is conditioned on: captions are sent as the prompt ('text'), class ids as "
         "class_label ('class'); default: what the endpoint says, else none.")]
ModelConfigOption = Annotated[Path | None, typer.Option(
    metavar="DIR|NAME", show_default=False,
    help="For a single-file Stable Diffusion checkpoint (.safetensors) that is not SD 1.x: a shipped config "
         "('stable-diffusion-v2' for 768 px v-prediction, 'stable-diffusion-v2-base' for 512 px epsilon) or a "
         "pipeline folder of the same architecture holding its configs and tokenizer (weights not needed); "
         "nothing is looked up online.")]
AlphaOption = Annotated[float, typer.Option(
    callback=_check_alpha, metavar="ALPHA", help="Significance level: 'evidence' needs p < alpha.")]
SeedOption = Annotated[int, typer.Option(min=0, metavar="INT", help="Seed for noise draws, folds and permutations.")]
DeviceOption = Annotated[str, typer.Option(
    envvar="CDI_AUDIT_DEVICE", callback=_check_device, metavar="DEVICE",
    help="'auto' (CUDA if present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")]
DtypeOption = Annotated[str, typer.Option(
    envvar="CDI_AUDIT_DTYPE", callback=_check_dtype, metavar="DTYPE",
    help="Precision of forward passes: 'auto' (bfloat16 or float16 on CUDA, float32 on CPU), 'float32', "
         "'bfloat16' or 'float16'. DDIM inversions always run in float32.")]
BatchSizeOption = Annotated[int, typer.Option(min=1, metavar="N", help="Images per model batch.")]
CompileOption = Annotated[bool, typer.Option(
    "--compile", help="Run the network through torch.compile: worth it for long GPU runs; the first batches wait "
                      "for the compilation (a minute or more), and features move only by float rounding.")]
MaxBatchGradOption = Annotated[int, typer.Option(
    min=1, metavar="N", help="Images per backward pass for gradient features (caps their memory).")]
CacheDirOption = Annotated[Path | None, typer.Option(
    envvar="CDI_AUDIT_CACHE_DIR", metavar="DIR", show_default=False,
    help="Feature cache folder (default: the user cache folder, e.g. ~/.cache/cdi-audit).")]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write cached features.")]
JsonOption = Annotated[bool, typer.Option(
    "--json", help="Print the result as one JSON object on stdout (nothing else goes to stdout).")]
StrictOption = Annotated[bool, typer.Option(
    "--strict", help="Stop (exit 3) on any unreadable or unsupported file instead of skipping it.")]
JobsOption = Annotated[int, typer.Option(
    min=1, metavar="N", help="Worker processes for the statistics (default: one per CPU core, at most 8).")]
CaptionOption = Annotated[str | None, typer.Option(
    metavar="TEXT", show_default=False,
    help="One caption for every image (text-to-image models). Otherwise captions come from NAME.txt beside "
         "each image or a captions.csv / captions.jsonl in the folder; images without one get the empty caption.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]


def _require_reachable(permutations: int, threshold: float, what: str) -> None:
    problem = permutations_problem(permutations, threshold, what)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint="--permutations")


def _require_one_model(model: Path | None, endpoint: str | None, endpoint_cmd: str | None,
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


def _run_stage(stage, console: Console, json_output: bool, debug: bool):
    """Run a stage with progress bars; turn failures into their exit codes (never 1, which means evidence)."""
    try:
        with StageProgress(console) as progress:
            return stage(progress)
    except AuditError as error:
        _fail(console, error.exit_code, str(error), json_output, debug)
    except KeyboardInterrupt:
        _fail(console, INTERRUPTED, "Interrupted; features extracted so far (and completed endpoint calls) are "
              "cached, and a re-run resumes.", json_output, debug)
    except Exception as error:  # a bug must not exit 1, which means "evidence"
        _fail(console, INTERNAL_ERROR, f"Internal error ({type(error).__name__}: {error}); "
              "please report it, with the output of --debug.", json_output, debug)


@app.command()
def check(
    suspect_dir: Annotated[Path, typer.Argument(
        help="Folder of your published images (the suspect set): were these used to train the model?",
        metavar="SUSPECT_DIR", show_default=False)],
    reference: Annotated[Path, typer.Option(
        "--reference", "-r", metavar="DIR", show_default=False,
        help="Folder of your unpublished images from the same source (never trained on).")],
    model: ModelOption = None,
    model_config: ModelConfigOption = None,
    features: Annotated[str, typer.Option(callback=_check_features, metavar="NAMES", help=FEATURES_HELP)] = "auto",
    alpha: AlphaOption = 0.01,
    seed: SeedOption = 0,
    test: Annotated[TestChoice, typer.Option(
        help="'permutation' (exact, uses all images) or 'split' (fast, valid, less power).")
    ] = TestChoice.permutation,
    permutations: Annotated[int, typer.Option(
        min=1, metavar="B", help="Number of label permutations B (the smallest possible p is 1/(B+1)).")] = 1000,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    compile_network: CompileOption = False,
    batch_size: BatchSizeOption = 32,
    max_batch_grad: MaxBatchGradOption = 16,
    caption: CaptionOption = None,
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
    json_output: JsonOption = False,
    out: Annotated[Path | None, typer.Option(
        metavar="DIR", show_default=False,
        help="Folder to write the audit into: report.json (the full result), manifest.json (sha256, size and "
             "dimensions of every input and model file; see 'cdi-audit verify'), scores.csv (per-image diagnostic "
             "scores), the figures as PNG, report.html and report.pdf (see --report).")] = None,
    report_formats: Annotated[str | None, typer.Option(
        "--report", metavar="FORMATS", callback=_check_report_formats, show_default=False,
        help="Reports to render into --out: 'pdf,html' (the default), 'pdf', 'html' or 'none'. 'cdi-audit "
             "report' renders them again later from report.json.")] = None,
    shift_alpha: Annotated[float, typer.Option(
        min=0.001, max=0.5, metavar="ALPHA",
        help="Level of the model-free distribution-shift check: if image statistics alone (size, format, "
             "compression, colour, sharpness) tell the sets apart at this level, the verdict is inconclusive "
             "(exit 5).")] = 0.05,
    control_model: Annotated[Path | None, typer.Option(
        metavar="PATH", show_default=False,
        help="A model known NOT to have seen your images (for a fine-tune: its base model), loaded like --model. "
             "The same audit runs on it; 'evidence' then also needs the control to find no difference between "
             "the sets and the suspect model's AUC to exceed the control's, otherwise the verdict is "
             "inconclusive. Both results are reported.")] = None,
    control_model_config: Annotated[Path | None, typer.Option(
        metavar="DIR|NAME", show_default=False,
        help="Like --model-config, for a single-file control checkpoint.")] = None,
    curve_resamples: Annotated[int, typer.Option(
        min=0, metavar="R",
        help="Random audits per point of the p-value-against-number-of-images curve (split test, so cheap); "
             "0 skips the curve.")] = 100,
    strict: StrictOption = False,
    jobs: JobsOption = DEFAULT_JOBS,
    access: AccessOption = AccessChoice.auto,
    endpoint: EndpointOption = None,
    endpoint_cmd: EndpointCommandOption = None,
    header: HeaderOption = None,
    endpoint_timeout: EndpointTimeoutOption = 60.0,
    retries: RetriesOption = 5,
    retry_backoff: RetryBackoffOption = 1.0,
    max_rps: MaxRpsOption = None,
    image_size: ImageSizeOption = None,
    endpoint_family: EndpointFamilyOption = None,
    endpoint_conditioning: EndpointConditioningOption = None,
    debug: DebugOption = False,
) -> None:
    """Audit one model: do your published images look like its training data, compared with unpublished ones?

    The model is a local pipeline (--model), or only an image-to-image endpoint (--endpoint URL or
    --endpoint-cmd TEMPLATE), which allows the black-box feature (ReDiffuse) only.
    """
    from cdi_audit.audit import AuditSettings, run_audit
    from cdi_audit.report.terminal import print_summary

    if test is TestChoice.permutation:
        _require_reachable(permutations, alpha, "alpha")
    console = stderr_console()
    from cdi_audit.targets.endpoints import EndpointSettings

    _require_one_model(model, endpoint, endpoint_cmd, access)
    if control_model_config is not None and control_model is None:
        raise typer.BadParameter("it configures the control model; add --control-model PATH.",
                                 param_hint="--control-model-config")
    _require_out_for_reports(report_formats, out)
    endpoint_settings = None if model is not None else EndpointSettings(
        url=endpoint, command=endpoint_cmd, headers=tuple(header or ()), timeout=endpoint_timeout, retries=retries,
        backoff=retry_backoff, max_rps=max_rps, image_size=image_size,
        family=endpoint_family.value if endpoint_family else None,
        conditioning=endpoint_conditioning.value if endpoint_conditioning else None,
    )
    settings = AuditSettings(
        suspect_dir=suspect_dir, reference_dir=reference, model_path=model, model_config=model_config,
        access=access.value, endpoint=endpoint_settings, features=features, alpha=alpha,
        seed=seed, test=test.value, permutations=permutations, device=device, dtype=dtype, batch_size=batch_size,
        compile_network=compile_network,
        max_batch_grad=max_batch_grad, caption=caption, cache_dir=cache_dir, use_cache=not no_cache, strict=strict,
        n_jobs=jobs, curve_resamples=curve_resamples, shift_alpha=shift_alpha, control_model=control_model,
        control_model_config=control_model_config,
    )
    result = _run_stage(lambda progress: run_audit(settings, progress), console, json_output, debug)
    payload = result.model_dump_json(indent=2)
    if out is not None:
        from cdi_audit.report.files import write_audit_files

        _print_written(console, write_audit_files(result, out, _report_formats(report_formats)))
    print_summary(result, console)
    if json_output:
        typer.echo(payload)
    raise typer.Exit(VERDICT_EXIT_CODES[result.verdict])


def _check_shard(value: str) -> str:
    from cdi_audit.sharding import parse_shard

    try:
        parse_shard(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    return value


def _place_this_process(shard: str, device: str) -> tuple[Shard, Launch | None, str]:
    """(shard, launch, device) of this extraction process: --shard and --device as given, or, when
    accelerate launch or torchrun started several processes, this rank's own shard and GPU. Such ranks also
    share the CPU cores out when the launcher set no OMP_NUM_THREADS. SettingsProblem when the launch and
    the options disagree."""
    from cdi_audit.errors import SettingsProblem
    from cdi_audit.sharding import ALL, detect_launch, parse_shard

    chosen = parse_shard(shard)
    try:
        launch = detect_launch()
    except ValueError as error:
        raise SettingsProblem(str(error)) from None
    if launch is None:
        return chosen, None, device
    if chosen != ALL:
        raise SettingsProblem(f"--shard {chosen} cannot be combined with a launch of {launch.world_size} "
                              f"processes, which already gives each its own shard (this is rank {launch.rank}, "
                              f"shard {launch.shard}); drop --shard, or run without accelerate launch / torchrun.")
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(launch.cpu_threads(os.cpu_count()))
    placed = launch.device(device, torch.cuda.is_available())
    if placed != device and launch.local_rank >= torch.cuda.device_count():
        raise SettingsProblem(f"{launch.local_world_size} processes were launched on this machine but only "
                              f"{torch.cuda.device_count()} GPUs are visible; launch at most one per GPU, or "
                              "use --device cpu.")
    return launch.shard, launch, placed


@app.command()
def extract(
    suspect_dir: Annotated[Path, typer.Argument(metavar="SUSPECT_DIR", show_default=False,
                                                help="Folder of the suspect images.")],
    reference_dir: Annotated[Path, typer.Argument(metavar="REFERENCE_DIR", show_default=False,
                                                  help="Folder of the reference images.")],
    model: ModelOption = None,
    model_config: ModelConfigOption = None,
    features: Annotated[str, typer.Option(callback=_check_features, metavar="NAMES", help=FEATURES_HELP)] = "auto",
    shard: Annotated[str, typer.Option(
        callback=_check_shard, metavar="i/N",
        help="Extract only shard i of N: the images whose sha256 is i-1 modulo N, so N processes or machines "
             "sharing one cache folder (or whose caches are copied together) split the work without "
             "talking to each other. Leave it out under accelerate launch or torchrun: each process then takes "
             "shard RANK+1 of WORLD_SIZE.")] = "1/1",
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    compile_network: CompileOption = False,
    batch_size: BatchSizeOption = 32,
    max_batch_grad: MaxBatchGradOption = 16,
    caption: CaptionOption = None,
    cache_dir: CacheDirOption = None,
    strict: StrictOption = False,
    access: AccessOption = AccessChoice.auto,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Extract features into the cache without testing: for sharded, multi-GPU or multi-machine runs.

    'check' with the same model, features, seed, device and precision then reads them back and makes no
    model call for these images. Features are stored after every batch, so an interrupted run resumes.

    On several GPUs or machines: 'accelerate launch --multi_gpu --num_processes 4 -m cdi_audit extract ...'
    (or torchrun ... -m cdi_audit extract ...). Each process then extracts its own shard (RANK+1 of
    WORLD_SIZE) on its own GPU (with --device auto) into the shared --cache-dir; leave out --shard.
    """
    from cdi_audit.audit import ModelSettings, run_extraction
    from cdi_audit.errors import SettingsProblem

    _require_one_model(model, None, None, access)
    console = stderr_console()
    try:
        chosen, launch, device = _place_this_process(shard, device)
    except SettingsProblem as error:
        _fail(console, error.exit_code, str(error), json_output, debug)
    settings = ModelSettings(model_path=model, model_config=model_config, access=access.value, features=features,
                             seed=seed, device=device, dtype=dtype, batch_size=batch_size,
                             max_batch_grad=max_batch_grad, caption=caption, cache_dir=cache_dir, strict=strict,
                             compile_network=compile_network)
    summary, description = _run_stage(
        lambda progress: run_extraction(settings, [suspect_dir, reference_dir], chosen, progress), console,
        json_output, debug)
    rank = launch.rank if launch is not None else None
    console.print(f"{'' if rank is None else f'rank {rank}, '}shard {chosen}: {summary.images} images, "
                  f"{summary.images_from_cache} already cached, {summary.model_calls} model calls, "
                  f"{summary.seconds:.1f} s; model {description.path} (sha256 {description.fingerprint[:12]}…)")
    if json_output:
        typer.echo(json.dumps({"shard": str(chosen), "rank": rank, **vars(summary),
                               "model_fingerprint": description.fingerprint}))


class CorrectionChoice(str, Enum):
    bh = "bh"
    holm = "holm"
    none = "none"


@app.command()
def batch(
    batch_file: Annotated[Path, typer.Argument(
        metavar="AUDITS.toml", show_default=False,
        help="The audits to run: [[audit]] tables with name, suspect, reference, model and optionally "
             "control_model, features, alpha, test, permutations, seed, shift_alpha, curve_resamples, caption, "
             "access, model_config; a [defaults] table gives values to all. Paths are relative to the file.")],
    correction: Annotated[CorrectionChoice, typer.Option(
        help="Correction for testing many audits at once: 'bh' (Benjamini-Hochberg, false discovery rate), "
             "'holm' (family-wise error rate) or 'none'. An audit is evidence only if its adjusted p < alpha.")
    ] = CorrectionChoice.bh,
    out: Annotated[Path | None, typer.Option(
        metavar="DIR", show_default=False,
        help="Write batch.json and one folder per audit (named after it) with its report files, as check "
             "--out does.")] = None,
    report_formats: Annotated[str | None, typer.Option(
        "--report", metavar="FORMATS", callback=_check_report_formats, show_default=False,
        help="Reports to render into each audit's folder: 'pdf,html' (the default), 'pdf', 'html' or 'none'.")
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    compile_network: CompileOption = False,
    batch_size: BatchSizeOption = 32,
    max_batch_grad: MaxBatchGradOption = 16,
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
    json_output: JsonOption = False,
    strict: StrictOption = False,
    jobs: JobsOption = DEFAULT_JOBS,
    debug: DebugOption = False,
) -> None:
    """Run many audits (collections against models), corrected for multiple testing together.

    Models are loaded once and features are shared through the cache. The exit code is the most severe of
    the audits': an error's code (the highest), else 5 if any is inconclusive, 1 if any is evidence, else 0.
    """
    from cdi_audit.batch import read_batch_file, run_batch
    from cdi_audit.report.terminal import print_batch_summary

    console = stderr_console()
    _require_out_for_reports(report_formats, out)
    machine = dict(device=device, dtype=dtype, compile_network=compile_network, batch_size=batch_size,
                   max_batch_grad=max_batch_grad,
                   cache_dir=cache_dir, use_cache=not no_cache, strict=strict, n_jobs=jobs)

    def stage(progress: StageProgress):
        entries = read_batch_file(batch_file, machine)

        def announce(position: int, entry) -> None:
            console.print(f"[bold]audit {position}/{len(entries)}[/] {entry.name}: {entry.settings.suspect_dir} "
                          f"against {entry.settings.reference_dir}, model {entry.settings.model_path}")

        return run_batch(entries, batch_file, correction.value, progress, announce)

    outcome = _run_stage(stage, console, json_output, debug)
    if out is not None:
        from cdi_audit.report.files import write_audit_files, write_file

        formats = _report_formats(report_formats)
        written = [write_file(out / "batch.json", outcome.model_dump_json(indent=2) + "\n")]
        for audit in outcome.audits:
            if audit.result is not None:
                written += write_audit_files(audit.result, out / audit.name, formats)
        _print_written(console, written)
    print_batch_summary(outcome, console)
    if json_output:
        typer.echo(outcome.model_dump_json(indent=2))
    raise typer.Exit(outcome.exit_code)


class EvaluationTestChoice(str, Enum):
    permutation = "permutation"
    split = "split"
    cdi_reference = "cdi-reference"


@app.command()
def evaluate(
    members: Annotated[Path, typer.Option(
        metavar="DIR", show_default=False, help="Folder of images known to be in the model's training data.")],
    nonmembers: Annotated[Path, typer.Option(
        metavar="DIR", show_default=False,
        help="Folder of images from the same distribution known NOT to be in it (at least 20).")],
    model: ModelOption = None,
    model_config: ModelConfigOption = None,
    features: Annotated[str, typer.Option(
        callback=_check_features, metavar="NAMES",
        help=FEATURES_HELP + " Every preset these cover, and each extractor alone, is evaluated.")] = "full",
    repeats: Annotated[int, typer.Option(
        min=1, metavar="R", help="Random draws of P and U per sample size.")] = 50,
    test: Annotated[list[EvaluationTestChoice] | None, typer.Option(
        metavar="TEST", show_default=False,
        help="Tests to compare (repeat the option; default: all three). 'cdi-reference' is the CDI paper's "
             "pooled t-test, NOT calibrated, shown only for comparison.")] = None,
    permutations: Annotated[int, typer.Option(
        min=1, metavar="B", help="Permutations per simulated audit (at least 100, so that p can go below "
                                 "0.01).")] = 200,
    alpha: Annotated[float, typer.Option(
        callback=_check_alpha, metavar="ALPHA", help="Level for the rejection rates (power and false positives).")
    ] = 0.01,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    compile_network: CompileOption = False,
    batch_size: BatchSizeOption = 32,
    max_batch_grad: MaxBatchGradOption = 16,
    caption: CaptionOption = None,
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
    json_output: JsonOption = False,
    out: Annotated[Path | None, typer.Option(
        metavar="DIR", show_default=False,
        help="Folder to write evaluation.json and the plot p_value_curves.png into.")] = None,
    strict: StrictOption = False,
    jobs: JobsOption = DEFAULT_JOBS,
    access: AccessOption = AccessChoice.auto,
    debug: DebugOption = False,
) -> None:
    """Measure detection power on a model whose training members are known.

    For each feature set: AUC and TPR at 1% FPR of members against
    non-members, and how many images an audit needs (the smallest n whose
    median p over REPEATS random n-vs-n audits is below 0.01), next to the
    false-positive rate measured by auditing non-members against non-members.
    """
    from cdi_audit.evaluate import EvaluationSettings, run_evaluation
    from cdi_audit.evaluation import EVALUATION_TESTS, NEEDED_P
    from cdi_audit.report.evaluation_table import print_evaluation

    _require_one_model(model, None, None, access)
    tests = tuple(choice.value for choice in test) if test else EVALUATION_TESTS
    if "permutation" in tests:
        _require_reachable(permutations, NEEDED_P, "the 'images needed' threshold")
    console = stderr_console()
    settings = EvaluationSettings(
        members_dir=members, nonmembers_dir=nonmembers, model_path=model, model_config=model_config,
        access=access.value, features=features, repeats=repeats,
        tests=tuple(dict.fromkeys(tests)), permutations=permutations, alpha=alpha, seed=seed, device=device,
        dtype=dtype, batch_size=batch_size, max_batch_grad=max_batch_grad, caption=caption, cache_dir=cache_dir,
        use_cache=not no_cache, strict=strict, n_jobs=jobs, compile_network=compile_network,
    )
    result = _run_stage(lambda progress: run_evaluation(settings, progress), console, json_output, debug)
    payload = result.model_dump_json(indent=2)
    if out is not None:
        from cdi_audit.report.files import write_file
        from cdi_audit.report.plots import plot_p_value_curves

        _print_written(console, [write_file(out / "evaluation.json", payload + "\n"),
                                 plot_p_value_curves(result, out / "p_value_curves.png")])
    print_evaluation(result, console)
    if json_output:
        typer.echo(payload)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(
        metavar="MODEL", show_default=False,
        help="The local model to serve: a diffusers pipeline folder or a single-file .safetensors checkpoint.")],
    model_config: ModelConfigOption = None,
    host: Annotated[str, typer.Option(
        metavar="ADDRESS", help="Address to listen on. Keep the loopback default unless others must reach it: the "
                                "server has no authentication of its own.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT",
                                      help="Port to listen on (0: any free port; the URL is printed).")] = 8000,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    debug: DebugOption = False,
) -> None:
    """Serve a local model through the cdi-audit-variation/1 HTTP protocol (image in, variation out).

    Auditors then run 'cdi-audit check ... --endpoint URL' with black-box access only. Stop with Ctrl-C.
    """
    from cdi_audit.serve import VariationServer, is_loopback
    from cdi_audit.targets.blackbox import LocalVariation
    from cdi_audit.targets.loading import load_target, resolve_device, resolve_dtype

    console = stderr_console()

    def load(progress: StageProgress) -> LocalVariation:
        chosen = resolve_device(device)
        target = load_target(model, chosen, resolve_dtype(dtype, chosen), model_config)
        target.load_weights()  # a broken model fails now, not at the first request
        return LocalVariation(target)

    backend = _run_stage(load, console, False, debug)
    try:
        server = VariationServer((host, port), backend)
    except OSError as error:
        _fail(console, ExitCode.USAGE, f"Cannot listen on {host}:{port} ({error}); choose another --port or --host.",
              False, debug)
    if not is_loopback(host):
        console.print(f"[yellow]warning[/] listening on {host}, beyond this machine, without authentication.")
    info = backend.info
    console.print(f"serving {model} ({info.family}, {info.sample_size} px, {info.conditioning} conditioning) at "
                  f"[bold]{server.url}[/] (cdi-audit-variation/1); Ctrl-C to stop")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print(f"stopped after {server.calls} call(s)")
    finally:
        server.server_close()


@app.command("extract-evidence")
def extract_evidence(
    suspect_dir: Annotated[Path, typer.Argument(metavar="SUSPECT_DIR", show_default=False,
                                                help="Folder of your published images.")],
    model: ModelOption = None,
    model_config: ModelConfigOption = None,
    reference: Annotated[Path | None, typer.Option(
        "--reference", "-r", metavar="DIR", show_default=False,
        help="Folder of your unpublished images: the share of them with a near-copy is what the suspect "
             "share is compared with (Fisher's exact test). Without it nothing is tested.")] = None,
    budget: Annotated[int, typer.Option(
        min=8, metavar="N", help="Generations in all: half form the pool, half are guided towards its "
                                 "cohesive clusters. Generations are cached per model and reused.")] = 1024,
    threshold: Annotated[float, typer.Option(
        min=-1.0, max=1.0, metavar="S",
        help="Similarity (cosine of 16 x 16 mean-removed pixels) at or above which a generation counts as a "
             "near-copy.")] = 0.85,
    guidance_scale: Annotated[float, typer.Option(
        min=0.0, metavar="LAMBDA", help="Classifier-guidance scale towards each cluster (0: no guidance).")] = 10.0,
    steps: Annotated[int, typer.Option(min=1, max=1000, metavar="N", help="DDIM steps per generation.")] = 50,
    alpha: AlphaOption = 0.01,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    batch_size: Annotated[int, typer.Option(min=1, metavar="N", help="Generations per model batch.")] = 64,
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
    out: Annotated[Path | None, typer.Option(
        metavar="DIR", show_default=False,
        help="Write evidence.json and gallery.png (your closest images beside the generations nearest to them) "
             "here.")] = None,
    json_output: JsonOption = False,
    strict: StrictOption = False,
    debug: DebugOption = False,
) -> None:
    """Search what the model generates for near-copies of your images (SIDE: surrogate-conditional extraction).

    Generates a pool of images, clusters it, trains a small classifier on the clusters and generates again
    guided towards each of them; then finds, for each of your images, the generation nearest to it. Exit 1
    when the suspect images find near-copies significantly more often than the reference images (p < alpha),
    else 0. Finding none shows nothing: most trained images are never reproduced.
    """
    from cdi_audit.evidence.output import print_summary, result_json, write_outputs
    from cdi_audit.evidence.search import SearchSettings, run_search

    _require_one_model(model, None, None, AccessChoice.auto)
    console = stderr_console()
    settings = SearchSettings(model_path=model, model_config=model_config, suspect_dir=suspect_dir,
                              reference_dir=reference, budget=budget, seed=seed, steps=steps,
                              guidance_scale=guidance_scale, threshold=threshold, device=device, dtype=dtype,
                              batch_size=batch_size, cache_dir=cache_dir, use_cache=not no_cache, strict=strict)
    result = _run_stage(lambda progress: run_search(settings, progress), console, json_output, debug)
    print_summary(result, alpha, console)
    if out is not None:
        written = write_outputs(result, out, alpha)
        if (out / "report.json").is_file():  # an audit's folder: its reports gain the search
            from cdi_audit.report.files import REPORT_FORMATS

            written += _render_saved(console, out / "report.json", out, REPORT_FORMATS)
        _print_written(console, written)
    if json_output:
        typer.echo(json.dumps(result_json(result, alpha)))
    significant = result.share is not None and result.share.p_value < alpha
    raise typer.Exit(int(ExitCode.EVIDENCE if significant else ExitCode.NO_EVIDENCE))


@app.command()
def report(
    source: Annotated[Path, typer.Argument(
        metavar="REPORT", show_default=False,
        help="An audit's report.json, or the folder that holds it (written by 'check --out').")],
    pdf: Annotated[bool, typer.Option("--pdf", help="Render report.pdf.")] = False,
    html: Annotated[bool, typer.Option("--html", help="Render report.html.")] = False,
    out: Annotated[Path | None, typer.Option(
        metavar="DIR", show_default=False,
        help="Folder to write into (default: the folder of report.json).")] = None,
) -> None:
    """Render report.pdf and report.html (both unless --pdf or --html) again from report.json.

    Needs neither the model nor torch. The same report.json gives byte-identical files. Uses manifest.json and
    thumbnails.png from the same folder when they are there, else the image files the report lists; adds the
    search for near-copies when 'extract-evidence --out' wrote evidence.json there for the same model.
    """
    from cdi_audit.report.files import REPORT_FORMATS

    console = stderr_console()
    path = source / "report.json" if source.is_dir() else source
    formats = tuple(name for name, chosen in (("pdf", pdf), ("html", html)) if chosen) or REPORT_FORMATS
    _print_written(console, _render_saved(console, path, out or path.parent, formats))


def _render_saved(console: Console, path: Path, out: Path, formats: tuple[str, ...]) -> list[Path]:
    """Re-render the output folder of the audit saved at ``path`` (report.json) into ``out``."""
    from cdi_audit.evidence.summary import read_evidence
    from cdi_audit.manifest import Manifest, build_manifest
    from cdi_audit.report.files import write_output_folder
    from cdi_audit.report.thumbnails import thumbnail_strip
    from cdi_audit.result import AuditResult

    result = _read_saved(console, AuditResult, path, "report", "give the report.json an audit wrote with --out")
    folder = path.parent
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        manifest = _read_saved(console, Manifest, manifest_path, "manifest", "re-run the audit with --out")
    else:
        try:
            manifest = build_manifest(result)
        except OSError as error:
            _fail(console, ExitCode.INPUT_PROBLEM, f"No manifest.json beside {path}, and the files the report "
                  f"lists cannot be read to rebuild it ({type(error).__name__}).", False, False)
    thumbnails = folder / "thumbnails.png"
    try:
        evidence = read_evidence(folder)
    except ValueError as error:
        _fail(console, ExitCode.INPUT_PROBLEM, f"{error}; re-run extract-evidence with --out.", False, False)
    if evidence is not None and evidence.model_fingerprint != result.model.fingerprint:
        console.print(f"[yellow]warning:[/] {folder / 'evidence.json'} searched another model than the audit's; "
                      "the report leaves it out.")
    return write_output_folder(result, manifest, out, formats,
                               thumbnails.read_bytes() if thumbnails.is_file() else thumbnail_strip(result), evidence)


def _read_saved(console: Console, model, path: Path, what: str, hint: str, json_output: bool = False):
    """``path`` parsed as the pydantic ``model``; exit 3 with one sentence when it cannot be."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        _fail(console, ExitCode.INPUT_PROBLEM, f"{path} is not a readable cdi-audit {what} "
              f"({type(error).__name__}); {hint}.", json_output, False)


def _print_written(console: Console, paths: list[Path]) -> None:
    for path in paths:
        console.print(f"[dim]wrote {path}[/]")


@app.command()
def verify(
    folder: Annotated[Path, typer.Argument(
        metavar="DIR", show_default=False,
        help="An audit's output folder (holding manifest.json), or the manifest.json file itself.")],
    json_output: JsonOption = False,
) -> None:
    """Re-hash the files an audit read (its manifest) and say which still match, changed or are missing.

    Exit 0 when every file matches, 3 otherwise. Needs neither the model nor torch.
    """
    from cdi_audit.manifest import Manifest, verify_manifest

    console = stderr_console()
    path = folder / "manifest.json" if folder.is_dir() else folder
    manifest = _read_saved(console, Manifest, path, "manifest", "give the folder an audit wrote with --out",
                           json_output)

    outcome = _run_stage(lambda progress: verify_manifest(manifest, progress.counter("re-hashing files")),
                         console, json_output, False)
    for label, entries in (("changed", outcome.changed), ("missing", outcome.missing)):
        for entry in entries:
            console.print(f"[bold red]{label}[/] {entry.role} {entry.path}")
    summary = (f"{len(outcome.matched)} of {len(manifest.files)} files match the manifest"
               f" ({len(outcome.changed)} changed, {len(outcome.missing)} missing); set digest {manifest.digest[:16]}…")
    console.print(("[bold green]VERIFIED[/] " if outcome.all_match else "[bold red]NOT VERIFIED[/] ") + summary)
    if json_output:
        typer.echo(json.dumps({
            "verified": outcome.all_match, "digest": manifest.digest, "matched": len(outcome.matched),
            "changed": [entry.path for entry in outcome.changed], "missing": [entry.path for entry in outcome.missing],
        }, indent=2))
    raise typer.Exit(0 if outcome.all_match else int(ExitCode.INPUT_PROBLEM))


def _fail(console: Console, code: int, message: str, json_output: bool, debug: bool) -> NoReturn:
    if debug:
        console.print_exception(show_locals=False)
    console.print(f"[bold red]error:[/] {message}")
    if json_output:
        typer.echo(json.dumps({"error": {"exit_code": int(code), "message": message}}))
    raise typer.Exit(int(code))


def main() -> None:
    app()
