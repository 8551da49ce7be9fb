"""``cdi-audit extract-evidence``: search what the model generates for near-copies of the suspect images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cdi_audit.cli.app import guarded, prepare_out, run_stage, write_outputs
from cdi_audit.cli.options import (
    AccessChoice,
    AdapterOption,
    AllowPickleOption,
    AlphaOption,
    CacheDirOption,
    CompileOption,
    DebugOption,
    DeviceOption,
    DtypeOption,
    GuidanceOption,
    JsonOption,
    ModelConfigOption,
    ModelOption,
    NoCacheOption,
    SeedOption,
    StrictOption,
    model_spec,
    require_one_model,
)
from cdi_audit.cli.reports import load_saved, render_saved
from cdi_audit.console import stderr_console
from cdi_audit.errors import ExitCode


@guarded
def extract_evidence(
    suspect_dir: Annotated[Path, typer.Argument(metavar="SUSPECT_DIR", show_default=False,
                                                help="Folder of your published images.")],
    model: ModelOption = None,
    model_config: ModelConfigOption = None,
    adapter: AdapterOption = None,
    guidance: GuidanceOption = None,
    allow_pickle: AllowPickleOption = False,
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
    compile_network: CompileOption = False,
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
    from cdi_audit.evidence.output import print_summary, result_json
    from cdi_audit.evidence.output import write_outputs as write_evidence_files
    from cdi_audit.evidence.search import SearchSettings, run_search
    from cdi_audit.models.spec import Machine
    from cdi_audit.report.files import REPORT_FORMATS, discard_manifest

    require_one_model(model, None, None, AccessChoice.auto)
    console = stderr_console()
    prepare_out(out, [("the suspect folder", suspect_dir), ("the reference folder", reference)])
    spec = model_spec(model, model_config, adapter, allow_pickle, guidance)
    settings = SearchSettings(model=spec, suspect_dir=suspect_dir,
                              reference_dir=reference, budget=budget, seed=seed, steps=steps,
                              guidance_scale=guidance_scale, threshold=threshold,
                              machine=Machine(device, dtype, compile_network), batch_size=batch_size,
                              cache_dir=cache_dir, use_cache=not no_cache, strict=strict)
    result = run_stage(lambda progress: run_search(settings, progress), console)
    print_summary(result, alpha, console)
    if out is not None:
        def write() -> list[Path]:
            # An audit's folder: its reports gain the search. Its report is checked against the manifest
            # before anything is written, and the manifest is deleted until it is written again last.
            report = out / "report.json"
            saved = load_saved(report, False, console) if report.is_file() else None
            if saved is not None:
                discard_manifest(out)
            written = write_evidence_files(result, out, alpha)
            if saved is not None:
                written += render_saved(console, saved, out, REPORT_FORMATS, tuple(written))
            return written

        write_outputs(write, out, console, "The search finished")
    if json_output:
        typer.echo(json.dumps(result_json(result, alpha)))
    significant = result.share is not None and result.share.p_value < alpha
    raise typer.Exit(int(ExitCode.EVIDENCE if significant else ExitCode.NO_EVIDENCE))
