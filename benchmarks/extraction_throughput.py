"""Feature-extraction throughput on the sample model (``fast`` preset by default), and the cost of the test.

Measures, for each batch size: images/s, model calls (UNet rows) per image and
UNet rows/s, with no feature cache (every image computed). Then times the
permutation test (B = 1000) on the resulting 128 x 14 feature table.

    python benchmarks/extraction_throughput.py [--threads 2] [--device cpu] [--batch-sizes 16 32 64] [--features fast]

Keep the machine otherwise idle: two torch processes on two cores slow each other ~10x.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per batch size (median reported)")
    parser.add_argument("--features", default="fast", help="preset or extractor list to time (e.g. full, noise_optim)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np
    import torch

    from cdi_audit.features.registry import resolve_extractors
    from cdi_audit.inputs.images import scan_image_set
    from cdi_audit.models.device import resolve_device
    from cdi_audit.models.loading import load_target
    from cdi_audit.pipeline.extraction import extract_features
    from cdi_audit.verdict.decision import decide

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    target = load_target(REPO / "sample_data" / "model", device)
    suspect = scan_image_set(REPO / "sample_data" / "published")
    reference = scan_image_set(REPO / "sample_data" / "unpublished")
    records = suspect.records + reference.records
    extractors = resolve_extractors(args.features)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"machine: {device_name}; {os.cpu_count()} logical CPUs; torch {torch.__version__}; "
          f"{args.threads} torch threads; device {device}")
    columns = sum(len(e.columns) for e in extractors)
    print(f"model: sample_data/model (UNet2DModel xs, 32 px); {len(records)} images; features {args.features} "
          f"({columns} columns)\n")
    print("| batch size | images/s | model calls/image | UNet rows/s | seconds (median of "
          f"{args.repeats}) |\n|---|---|---|---|---|")
    extract_features(records[:8], target, extractors, seed=0, batch_size=8)  # warm-up
    table = None
    for batch_size in args.batch_sizes:
        timings, calls = [], 0
        for _ in range(args.repeats):
            before = target.forward_rows
            started = time.perf_counter()
            table, _ = extract_features(records, target, extractors, seed=0, batch_size=batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
            calls = target.forward_rows - before
        seconds = float(np.median(timings))
        print(f"| {batch_size} | {len(records) / seconds:.1f} | {calls / len(records):.0f} | "
              f"{calls / seconds:.0f} | {seconds:.2f} |")

    print(f"\n| statistics on the {len(records)} x {columns} table | jobs | seconds |\n|---|---|---|")
    for jobs in (1, 2):
        started = time.perf_counter()
        decision = decide(table, suspect.keys, reference.keys, alpha=0.01, test="permutation", seed=0,
                          permutations=1000, n_jobs=jobs)
        print(f"| permutation test, B = 1000 ({decision.outcome.permutations_run} run) + negative control "
              f"({decision.negative_control.permutations_run} run) + bootstrap CIs | {jobs} | "
              f"{time.perf_counter() - started:.1f} |")


if __name__ == "__main__":
    main()
