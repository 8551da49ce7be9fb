"""Feature-extraction throughput on one device: fused plans (cdi-audit) against the reference structure.

The reference structure is the CDI reference code's: each extractor is its own pass over the images,
batch by batch, loading and encoding each batch itself, with one network call per request (a loss
draw, a timestep, a DDIM step). cdi-audit loads and encodes each batch once and advances all
extractors' plans together, so each round's requests share network calls (``cdi_audit/features/fused.py``).
Both compute the same features with the same noise; the table below gives their largest difference.

Each implementation runs in its own process (peak memory is per process), after a warm-up batch:

    python benchmarks/throughput.py [--device cpu] [--threads 2] [--features fast] [--batch-size 32]
        [--repeats 3] [--model sample|sd15|sdxl] [--size 512] [--dtype float32] [--compile] [--memory-images 128 512]

``--model sd15`` and ``--model sdxl`` build a Stable Diffusion 1.5- or SDXL-sized pipeline from the
shipped configs with random weights (speed does not depend on them), for GPU measurements (SDXL at
``--size 1024``). Keep the machine otherwise idle: two torch processes on two cores slow each other ~10x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from extraction_throughput import cpu_name  # a sibling script: benchmarks/ is on sys.path when run

REPO = Path(__file__).resolve().parents[1]
# straightforward: the reference structure on the network as diffusers loads it; reference: the same structure
# on the network as cdi-audit loads it (channels-last on a CPU); fused: cdi-audit's extraction.
IMPLEMENTATIONS = ("straightforward", "reference", "fused")
# Dense bf16 tensor-core peaks from the vendors' datasheets (SXM parts), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def random_images(folder: Path, count: int, size: int, seed: int) -> Path:
    """``count`` distinct noise images: memory and speed do not depend on what the pictures show."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.png")
    return folder


# Shipped configs of the published architectures that ``--model`` can build with random weights.
RANDOM_MODELS = {"sd15": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-base"}


def random_target(name: str, device, size: int):
    """A published architecture (``RANDOM_MODELS``) built from the shipped configs with random weights, through
    its family's own ``build`` (speed and memory do not depend on the weights)."""
    import json

    import diffusers
    import torch
    import transformers

    from cdi_audit.models.families import family_for
    from cdi_audit.models.family import LoadedParts, PipelineIndex
    from cdi_audit.models.schedule import DiscreteSchedule
    from cdi_audit.models.single_file import materialised_config
    from cdi_audit.results.schema import ModelInfo

    with materialised_config(RANDOM_MODELS[name]) as folder:
        data = json.loads((folder / "model_index.json").read_text())
        index = PipelineIndex(data["_class_name"], {key: value[1] for key, value in data.items()
                                                    if isinstance(value, list) and value[1] is not None})
        family = family_for(index)
        parts = {}
        for component in family.components(index):
            where = folder / component.folder
            if component.kind == "tokenizer":
                parts[component.folder] = transformers.CLIPTokenizer.from_pretrained(where)
            elif component.kind == "text_encoder":
                config = transformers.CLIPTextConfig.from_pretrained(where)
                parts[component.folder] = getattr(transformers, config.architectures[0])(config)
            else:
                model_class = getattr(diffusers, index.components[component.folder])
                overrides = {"sample_size": size // 8} if component.role == "denoiser" else {}
                parts[component.folder] = model_class.from_config(model_class.load_config(where), **overrides)
        scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    roles = {c.role: c.folder for c in family.components(index) if c.role != "condition"}
    info = ModelInfo(path=f"{name}-random", fingerprint=f"{name}-random", family=family.label, sample_size=size,
                     num_train_timesteps=1000, prediction_type="epsilon", device=str(device), dtype="float32", files=[])
    schedule = DiscreteSchedule(torch.as_tensor(scheduler.alphas_cumprod), "latent")
    loaded = LoadedParts(parts, roles, schedule, "epsilon", device, info,
                         {key: value for key, value in data.items() if not isinstance(value, list)})
    family.check(loaded)
    return family.build(loaded)


def reference_structure(records, target, extractors, seed: int, batch_size: int):
    """Each extractor its own pass, batch by batch, loading and encoding every batch, one call per request."""
    import numpy as np
    import torch

    from cdi_audit.features.base import LatentBatch, NoiseSource
    from cdi_audit.inputs.images import load_model_pixels

    noise = NoiseSource(seed)
    columns = []
    for extractor in extractors:
        rows = []
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            with torch.no_grad():
                pixels = torch.from_numpy(load_model_pixels(chunk, target.sample_size)).to(target.device)
                captions = tuple(r.caption or "" for r in chunk) if target.conditioning == "text" else None
                batch = LatentBatch(target.encode(pixels), tuple(r.sha256 for r in chunk),
                                    target.encode_condition(chunk), pixels, captions)
                with target.precision(extractor.full_precision):
                    rows.append(extractor.extract(target, batch, noise).numpy())
        columns.append(np.concatenate(rows))
    return np.concatenate(columns, axis=1)


def worker(args) -> None:
    """One implementation in this process: prints one JSON line with its timings, calls and peak memory."""
    import numpy as np
    import torch

    from cdi_audit.features.registry import extractors_for
    from cdi_audit.inputs.conditions import with_conditions
    from cdi_audit.inputs.images import scan_image_set
    from cdi_audit.models.device import resolve_device, resolve_dtype
    from cdi_audit.models.loading import load_target
    from cdi_audit.pipeline.extraction import extract_features

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.model in RANDOM_MODELS:
        target = random_target(args.model, device, args.size)
    else:
        target = load_target(REPO / "sample_data" / "model", device)
    dtype = resolve_dtype(args.dtype, device)
    target.forward_dtype = None if dtype == torch.float32 else dtype
    if args.worker == "straightforward" and hasattr(target, "unet"):
        target.unet.to(memory_format=torch.contiguous_format)  # as loaded by diffusers, nothing tuned
    if args.compile:
        target.compile_network()
    extractors, _ = extractors_for(args.features, target)
    records = []
    for folder in args.folders:
        images, _ = with_conditions(scan_image_set(Path(folder)), target.conditioning, None)
        records += images.records
    records = sorted({r.key: r for r in records}.values(), key=lambda r: r.key)

    def run(subset):
        if args.worker != "fused":
            return reference_structure(subset, target, extractors, 0, args.batch_size)
        return extract_features(subset, target, extractors, 0, args.batch_size, max_rows=args.max_rows)[0].values

    started = time.perf_counter()
    run(records[: args.batch_size])  # warm-up (and compilation with --compile)
    warm_up = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timings, rows, calls = [], 0, 0
    for _ in range(args.repeats):
        rows_before, calls_before = target.forward_rows, target.network_calls
        started = time.perf_counter()
        values = run(records)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
        rows, calls = target.forward_rows - rows_before, target.network_calls - calls_before
    if args.table:
        np.save(args.table, np.asarray(values, dtype=np.float64))
    print(json.dumps({
        "images": len(records), "seconds": float(np.median(timings)), "warm_up_seconds": warm_up,
        "rows_per_image": rows / len(records), "calls_per_image": calls / len(records),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "flops_per_row": flops_per_row(target) if args.flops else None,
    }))


def flops_per_row(target) -> float:
    """FLOPs of one noise prediction (one image at one timestep), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(1, target.channels, target.sample_size // (8 if target.has_decoder else 1),
                    target.sample_size // (8 if target.has_decoder else 1), device=target.device)
    condition = target.encode_condition([_Blank()]) if target.conditioning == "text" else None
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        target.predict_noise(z, 100, condition)
    return float(counter.get_total_flops())


class _Blank:
    caption = ""
    label = None


def launch(args, implementation: str, folders: list[str], table: Path | None, flops: bool = False) -> dict:
    command = [sys.executable, __file__, "--worker", implementation, "--folders", *folders,
               "--device", args.device, "--threads", str(args.threads), "--features", args.features,
               "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--model", args.model,
               "--size", str(args.size), "--dtype", args.dtype]
    if args.max_rows:
        command += ["--max-rows", str(args.max_rows)]
    if args.compile and implementation == "fused":
        command.append("--compile")
    if table is not None:
        command += ["--table", str(table)]
    if flops:
        command.append("--flops")
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"{implementation} worker failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--features", default="fast")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-rows", type=int, default=None, help="rows per network call (default: by device)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=("sample", *RANDOM_MODELS), default="sample")
    parser.add_argument("--size", type=int, default=512, help="image size for --model sd15 or sdxl")
    parser.add_argument("--images", type=int, default=64, help="random images for --model sd15 or sdxl")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (fused run only)")
    parser.add_argument("--memory-images", type=int, nargs="*", default=[128, 512],
                        help="image counts for the memory check (fused, random 32 px images)")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--folders", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        if args.model in RANDOM_MODELS:
            folders = [str(random_images(temporary / "images", args.images, args.size, 0))]
        else:
            folders = [str(REPO / "sample_data" / name) for name in ("published", "unpublished")]
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
        print(f"machine: {device_name}; {os.cpu_count()} logical CPUs; torch {torch.__version__}; "
              f"{args.threads} torch threads; device {args.device}; dtype {args.dtype}"
              f"{'; torch.compile (fused)' if args.compile else ''}")
        results = {name: launch(args, name, folders, temporary / f"{name}.npy", flops=name == "fused")
                   for name in IMPLEMENTATIONS}
        reference, fused = (np.load(temporary / f"{name}.npy") for name in ("reference", "fused"))
        difference = np.abs(fused - reference)
        print(f"model: {args.model}; {results['fused']['images']} images; features {args.features}; "
              f"batch {args.batch_size} images\n")
        print("| implementation | images/s | model calls (rows)/image | network calls/image | seconds | "
              "peak RSS MB | peak CUDA MB |\n|---|---|---|---|---|---|---|")
        for name, result in results.items():
            cuda = f"{result['peak_cuda_mb']:.0f}" if result["peak_cuda_mb"] is not None else ""
            print(f"| {name} | {result['images'] / result['seconds']:.1f} | {result['rows_per_image']:.0f} | "
                  f"{result['calls_per_image']:.2f} | {result['seconds']:.2f} | {result['peak_rss_mb']:.0f} | "
                  f"{cuda} |")
        ratio = results["reference"]["seconds"] / results["fused"]["seconds"]
        overall = results["straightforward"]["seconds"] / results["fused"]["seconds"]
        print(f"\nspeed-up over the reference structure: {ratio:.2f}x on the same network, {overall:.2f}x over "
              f"the straightforward one; features (fused against reference): max |difference| "
              f"{difference.max():.3g}, max relative "
              f"{(difference / np.maximum(np.abs(reference), 1e-30)).max():.3g}; fused warm-up "
              f"{results['fused']['warm_up_seconds']:.1f} s")
        flops = results["fused"]["flops_per_row"]
        peak = next((value for name, value in PEAK_BF16.items() if name in device_name), None)
        if flops:
            per_image = flops * results["fused"]["rows_per_image"]
            achieved = per_image * results["fused"]["images"] / results["fused"]["seconds"]
            line = f"{flops / 1e9:.2f} GFLOP per noise prediction; achieved {achieved / 1e12:.3f} TFLOP/s"
            if peak:
                line += (f"; at the {peak / 1e12:.0f} TFLOP/s bf16 peak an image's predictions would take "
                         f"{per_image / peak * 1e3:.3f} ms ({peak / per_image:.0f} images/s), "
                         f"{achieved / peak:.1%} of peak reached")
            print(line)
        if args.model == "sample" and args.memory_images:
            print("\n| images (random 32 px) | peak RSS MB (fused) | seconds |\n|---|---|---|")
            for count in args.memory_images:
                folder = random_images(temporary / f"memory{count}", count, 32, count)
                result = launch(argparse.Namespace(**{**vars(args), "repeats": 1}), "fused", [str(folder)], None)
                print(f"| {count} | {result['peak_rss_mb']:.0f} | {result['seconds']:.2f} |")


if __name__ == "__main__":
    main()
