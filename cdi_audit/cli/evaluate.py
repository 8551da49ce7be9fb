"""``cdi-audit evaluate``: detection power on a model whose training members are known."""

from __future__ import annotations

from enum import Enum
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
    BatchSizeOption,
    CacheDirOption,
    CaptionOption,
    CompileOption,
    DebugOption,
    DeviceOption,
    DtypeOption,
    GuidanceOption,
    JobsOption,
    JsonOption,
    MaxBatchGradOption,
    ModelConfigOption,
    ModelOption,
    NoCacheOption,
    NoCalibrationOption,
    SeedOption,
    StrictOption,
    model_spec,
    require_one_model,
)
from cdi_audit.console import shown, stderr_console


class EvaluationTestChoice(str, Enum):
    permutation = "permutation"
    split = "split"
    cdi_reference = "cdi-reference"


@guarded
def evaluate(
    members: Annotated[Path, typer.Option(
        metavar="DIR", show_default=False, help="Folder of images known to be in the model's training data.")],
    nonmembers: Annotated[Path, typer.Option(
        metavar="DIR", show_default=False,
        help="Folder of images from the same distribution known NOT to be in it (at least 20).")],
    model: ModelOption = None,
    model_config: ModelConfigOption = None,
    adapter: AdapterOption = None,
    guidance: GuidanceOption = None,
    allow_pickle: AllowPickleOption = False,
    no_calibration: NoCalibrationOption = False,
    features: Annotated[str, typer.Option(
        metavar="NAMES",
        help=FEATURES_HELP + " Every preset these cover, and each extractor alone, is evaluated.")] = "full",
    repeats: Annotated[int, typer.Option(
        metavar="R", help="Random draws of P and U per sample size.")] = 50,
    test: Annotated[list[EvaluationTestChoice] | None, typer.Option(
        metavar="TEST", show_default=False,
        help="Tests to compare (repeat the option; default: all three). 'cdi-reference' is the CDI paper's "
             "pooled t-test, NOT calibrated, shown only for comparison.")] = None,
    permutations: Annotated[int, typer.Option(
        metavar="B", help="Permutations per simulated audit (at least 100, so that p can go below "
                                 "0.01).")] = 200,
    alpha: Annotated[float, typer.Option(
        metavar="ALPHA", help="Level for the rejection rates (power and false positives).")
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
    from cdi_audit.api import evaluate as run
    from cdi_audit.report.evaluation_table import print_evaluation
    from cdi_audit.statistics.evaluation import EVALUATION_TESTS

    require_one_model(model, None, None, access)
    tests = tuple(choice.value for choice in test) if test else EVALUATION_TESTS
    console = stderr_console()
    spec = model_spec(model, model_config, adapter, allow_pickle, guidance)
    result = run_stage(lambda progress: run(
        members, nonmembers, spec, access=access.value, features=features, repeats=repeats, tests=tests,
        permutations=permutations, alpha=alpha, seed=seed, device=device, dtype=dtype, compile_network=compile_network,
        batch_size=batch_size, max_batch_grad=max_batch_grad, caption=caption, cache_dir=cache_dir,
        use_cache=not no_cache, strict=strict, jobs=jobs, calibration=not no_calibration, out=out, progress=progress,
    ), console)
    for path in result.written:
        console.print(f"[dim]wrote {shown(path)}[/]")
    print_evaluation(result, console)
    if json_output:
        typer.echo(result.model_dump_json(indent=2))
