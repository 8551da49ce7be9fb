"""Detection power on a weak-signal model: how many images does an audit need, per feature set and test?

Builds (once, cached in ``--work``) a benchmark like ``sample_data`` but far
less overfit: 32x32 crops of the offline photographs, a tiny DDPM trained on
``--members`` of them for ``--steps`` steps (about 480 passes over the members
by default, so single-image attacks are weak: loss AUC roughly 0.55-0.65), and
as many never-trained crops as non-members. Then runs ``cdi-audit evaluate``
on it and writes its JSON and plot next to this script.

    python benchmarks/detection_power.py [--work DIR] [--repeats 50] [--permutations 100]

Training takes about 11 minutes on 2 CPU cores, the evaluation about as long
again; keep the machine otherwise idle (two torch processes on two cores slow
each other ~10x). Results are recorded by hand in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "sample_data"))


def prepare(work: Path, members: int, steps: int, seed: int, threads: int) -> None:
    """Images and model under ``work``; skipped when the model is already there."""
    import numpy as np
    import torch
    from diffusers import DDPMPipeline
    from make_sample_data import random_crops, source_photographs, to_model_input, train_ddpm

    if (work / "model" / "model_index.json").exists():
        print(f"reusing {work / 'model'}")
        return
    torch.set_num_threads(threads)
    crops = random_crops(source_photographs(), 2 * members, np.random.default_rng(seed))
    folders = {"members": crops[0::2], "nonmembers": crops[1::2]}
    for name, images in folders.items():
        shutil.rmtree(work / name, ignore_errors=True)
        (work / name).mkdir(parents=True)
        for number, image in enumerate(images):
            image.save(work / name / f"{name}_{number:03d}.png")
    started = time.perf_counter()
    unet, scheduler = train_ddpm(to_model_input(folders["members"]), steps, seed)
    print(f"trained {steps} steps on {members} members in {time.perf_counter() - started:.0f} s")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(work / "model", safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cdi-audit-detection-power"))
    parser.add_argument("--members", type=int, default=300)
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--prepare-only", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    prepare(args.work, args.members, args.steps, args.seed, args.threads)
    if args.prepare_only:
        return
    out = HERE / "detection_power"
    command = [
        sys.executable, "-m", "cdi_audit", "evaluate",
        "--members", str(args.work / "members"), "--nonmembers", str(args.work / "nonmembers"),
        "--model", str(args.work / "model"), "--features", "full", "--repeats", str(args.repeats),
        "--permutations", str(args.permutations), "--alpha", str(args.alpha), "--jobs", str(args.threads),
        "--cache-dir", str(args.work / "cache"), "--json", "--out", str(out),
    ]
    started = time.perf_counter()
    result = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"evaluate failed with exit code {result.returncode}")
    summary = json.loads(result.stdout)
    print(f"evaluate took {time.perf_counter() - started:.0f} s; JSON and plot in {out}")
    for row in summary["images_needed"]:
        print(row)


if __name__ == "__main__":
    main()
