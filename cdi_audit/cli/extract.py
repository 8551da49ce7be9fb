"""``cdi-audit extract``: features into the cache only, for sharded, multi-GPU or multi-machine runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cdi_audit.cli.app import guarded, run_stage
from cdi_audit.cli.options import (
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
    JsonOption,
    MaxBatchGradOption,
    ModelConfigOption,
    ModelOption,
    SeedOption,
    StrictOption,
    model_spec,
    require_one_model,
)
from cdi_audit.console import shown, stderr_console

if TYPE_CHECKING:
    from cdi_audit.inputs.sharding import Launch, Shard


def _check_shard(value: str) -> str:
    from cdi_audit.inputs.sharding import parse_shard

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
    from cdi_audit.inputs.sharding import ALL, detect_launch, parse_shard

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


@guarded
def extract(
    suspect_dir: Annotated[Path, typer.Argument(metavar="SUSPECT_DIR", show_default=False,
                                                help="Folder of the suspect images.")],
    reference_dir: Annotated[Path, typer.Argument(metavar="REFERENCE_DIR", show_default=False,
                                                  help="Folder of the reference images.")],
    model: ModelOption = None,
    model_config: ModelConfigOption = None,
    adapter: AdapterOption = None,
    guidance: GuidanceOption = None,
    allow_pickle: AllowPickleOption = False,
    features: Annotated[str, typer.Option(metavar="NAMES", help=FEATURES_HELP)] = "auto",
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
    from cdi_audit.models.spec import Machine
    from cdi_audit.pipeline.model_features import run_extraction
    from cdi_audit.pipeline.settings import ModelSettings

    require_one_model(model, None, None, access)
    console = stderr_console()
    chosen, launch, device = _place_this_process(shard, device)
    spec = model_spec(model, model_config, adapter, allow_pickle, guidance)
    settings = ModelSettings(model=spec, access=access.value,
                             features=features, seed=seed, machine=Machine(device, dtype, compile_network),
                             batch_size=batch_size, max_batch_grad=max_batch_grad, caption=caption,
                             cache_dir=cache_dir, strict=strict)
    summary, description = run_stage(
        lambda progress: run_extraction(settings, [suspect_dir, reference_dir], chosen, progress), console)
    rank = launch.rank if launch is not None else None
    console.print(f"{'' if rank is None else f'rank {rank}, '}shard {chosen}: {summary.images} images, "
                  f"{summary.images_from_cache} already cached, {summary.model_calls} model calls, "
                  f"{summary.seconds:.1f} s; model {shown(description.path)} (sha256 {description.fingerprint[:12]}…)")
    if json_output:
        typer.echo(json.dumps({"shard": str(chosen), "rank": rank, **summary.model_dump(),
                               "model_fingerprint": description.fingerprint}))

