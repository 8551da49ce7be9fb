"""``cdi-audit check``: one audit, from the folders and the model to the verdict and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cdi_audit.cli.app import guarded, run_stage
from cdi_audit.cli.options import (
    DEFAULT_JOBS,
    FEATURES_HELP,
    AccessChoice,
    AccessOption,
    AdapterOption,
    AllowPickleOption,
    AlphaOption,
    BatchSizeOption,
    CacheDirOption,
    CaptionOption,
    CompileOption,
    DebugOption,
    DeviceOption,
    DtypeOption,
    EndpointCommandOption,
    EndpointConditioningOption,
    EndpointFamilyOption,
    EndpointOption,
    EndpointTimeoutOption,
    GuidanceOption,
    HeaderOption,
    ImageSizeOption,
    JobsOption,
    JsonOption,
    MaxBatchGradOption,
    MaxRpsOption,
    ModelConfigOption,
    ModelOption,
    NoCacheOption,
    NoCalibrationOption,
    RetriesOption,
    RetryBackoffOption,
    SeedOption,
    StrictOption,
    TestChoice,
    check_report_formats,
    model_spec,
    report_formats_of,
    require_one_model,
    require_out_for_reports,
)
from cdi_audit.console import shown, stderr_console


@guarded
def check(
    suspect_dir: Annotated[Path, typer.Argument(
        help="Folder of your published images (the suspect set): were these used to train the model?",
        metavar="SUSPECT_DIR", show_default=False)],
    reference: Annotated[Path, typer.Option(
        "--reference", "-r", metavar="DIR", show_default=False,
        help="Folder of your unpublished images from the same source (never trained on).")],
    model: ModelOption = None,
    model_config: ModelConfigOption = None,
    adapter: AdapterOption = None,
    guidance: GuidanceOption = None,
    allow_pickle: AllowPickleOption = False,
    features: Annotated[str, typer.Option(metavar="NAMES", help=FEATURES_HELP)] = "auto",
    alpha: AlphaOption = 0.01,
    seed: SeedOption = 0,
    test: Annotated[TestChoice, typer.Option(
        help="'permutation' (exact, uses all images) or 'split' (fast, valid, less power).")
    ] = TestChoice.permutation,
    permutations: Annotated[int, typer.Option(
        metavar="B", help="Number of label permutations B (the smallest possible p is 1/(B+1)).")] = 1000,
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
        help="Folder to write the audit into: report.json (the full result), scores.csv (per-image diagnostic "
             "scores), the figures as PNG, report.html and report.pdf (see --report), and last manifest.json "
             "(sha256 and size of every input, model file and file written there; see 'cdi-audit verify').")
    ] = None,
    report_formats: Annotated[str | None, typer.Option(
        "--report", metavar="FORMATS", callback=check_report_formats, show_default=False,
        help="Reports to render into --out: 'pdf,html' (the default), 'pdf', 'html' or 'none'. 'cdi-audit "
             "report' renders them again later from report.json.")] = None,
    shift_alpha: Annotated[float, typer.Option(
        metavar="ALPHA",
        help="Level of the model-free distribution-shift check (0.001 to 0.5): if image statistics alone (size, "
             "format, compression, colour, sharpness) or the captions' style and words tell the sets apart at "
             "this level, the verdict is inconclusive (exit 5).")] = 0.05,
    control_model: Annotated[Path | None, typer.Option(
        metavar="PATH", show_default=False,
        help="A model known NOT to have seen your images (for a fine-tune: its base model), loaded like --model "
             "(with --adapter, the base is the control and this is not needed). "
             "The same audit runs on it; 'evidence' then also needs the control to find no difference between "
             "the sets and the suspect model's AUC to exceed the control's, otherwise the verdict is "
             "inconclusive. Both results are reported.")] = None,
    control_model_config: Annotated[Path | None, typer.Option(
        metavar="DIR|NAME", show_default=False,
        help="Like --model-config, for a single-file control checkpoint.")] = None,
    no_calibration: NoCalibrationOption = False,
    curve_resamples: Annotated[int, typer.Option(
        metavar="R",
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
    from cdi_audit.api import audit
    from cdi_audit.blackbox.endpoints import EndpointSettings
    from cdi_audit.report.terminal import print_summary

    console = stderr_console()
    require_one_model(model, endpoint, endpoint_cmd, access)
    if control_model_config is not None and control_model is None:
        raise typer.BadParameter("it configures the control model; add --control-model PATH.",
                                 param_hint="--control-model-config")
    require_out_for_reports(report_formats, out)
    endpoint_settings = None if model is not None else EndpointSettings(
        url=endpoint, command=endpoint_cmd, headers=tuple(header or ()), timeout=endpoint_timeout, retries=retries,
        backoff=retry_backoff, max_rps=max_rps, image_size=image_size,
        family=endpoint_family.value if endpoint_family else None,
        conditioning=endpoint_conditioning.value if endpoint_conditioning else None,
    )
    result = run_stage(lambda progress: audit(
        suspect_dir, reference, model_spec(model, model_config, adapter, allow_pickle, guidance),
        endpoint=endpoint_settings, control=model_spec(control_model, control_model_config, None, False),
        access=access.value, features=features, alpha=alpha, seed=seed, test=test.value, permutations=permutations,
        device=device, dtype=dtype, compile_network=compile_network, batch_size=batch_size,
        max_batch_grad=max_batch_grad, caption=caption, cache_dir=cache_dir, use_cache=not no_cache, strict=strict,
        jobs=jobs, curve_resamples=curve_resamples, shift_alpha=shift_alpha, calibration=not no_calibration,
        out=out, reports=report_formats_of(report_formats), progress=progress), console)
    for path in result.written:
        console.print(f"[dim]wrote {shown(path)}[/]")
    print_summary(result, console)
    if json_output:
        typer.echo(result.model_dump_json(indent=2))
    raise typer.Exit(result.exit_code)
