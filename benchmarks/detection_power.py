"""Detection power on a weakly memorising model: how many images does an audit need (issue 22)?

The benchmark the detection-power work is measured on. Three stages, each kept under ``--work``:

1. ``prepare``: 3 x ``--members`` distinct 32 x 32 crops of the offline photographs (as ``sample_data``),
   split into ``members/`` (trained on) and two never-trained sets, ``heldout_a/`` and ``heldout_b/``; the
   xs UNet trained on the members, saved at each of ``--checkpoints`` steps; kept is the checkpoint whose
   single-image loss attack AUC is the highest at or below ``--max-loss-auc`` (0.56): weak, but not nothing.
   (With 512 members: AUC 0.495 after 4,500 steps, 0.505 after 6,000, 0.520 after 7,500, 0.529 after 9,000;
   continued from 9,000: 0.544 after 10,500, 0.550 after 12,000, kept, 0.566 after 13,500.)
   Checkpoints beyond those already saved continue from the last one, with a fresh optimiser state: the
   model of RESULTS.md is ``--stage prepare`` with the default checkpoints, then again with
   ``--checkpoints 10500 12000 13500``.
2. ``extract``: the ``full`` preset's features of all images, with this checkout's code (one file per
   ``--label``, so that features of two versions of the code can be compared on the same model).
3. ``power``: for each feature set and n in ``--sizes``, ``--repeats`` audits of n members against n images
   of ``heldout_a`` (the members curve: median p, images needed for median p < 0.01) and of n images of
   ``heldout_b`` against n of ``heldout_a`` (the null curve: the false-positive rate at 0.01 and 0.05), with
   the permutation test (``--permutations``) and, for comparison only, the CDI paper's reference rule.

    python benchmarks/detection_power.py [--work DIR] [--label NAME] [--repeats 50] [--permutations 100]

Preparing takes about an hour on 2 CPU cores (training to 9,000 steps took 36 minutes), extracting ``full``
6 minutes, the curves about 5 per feature set; keep the machine otherwise idle. The JSON goes to
``benchmarks/detection_power/LABEL.json``; results are recorded by hand in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "sample_data"))

SETS = ("members", "heldout_a", "heldout_b")
SIZES = (20, 30, 50, 70, 100, 150, 200)
NEEDED_P = 0.01


def prepare(work: Path, members: int, checkpoints: list[int], seed: int, max_loss_auc: float) -> None:
    """Images and model under ``work``; skipped when the model is already there. The UNet is trained to the
    last of ``checkpoints`` steps, saved at each, and the checkpoint kept as ``model/`` is the one whose
    single-image loss AUC is the highest at or below ``max_loss_auc`` (weak, but not nothing)."""
    import numpy as np
    from diffusers import DDPMPipeline, UNet2DModel
    from make_sample_data import random_crops, source_photographs, to_model_input, train_ddpm

    if (work / "model" / "model_index.json").exists():
        print(f"reusing {work / 'model'}")
        return
    if not (work / "members").exists():
        crops = random_crops(source_photographs(), len(SETS) * members, np.random.default_rng(seed))
        for index, name in enumerate(SETS):
            (work / name).mkdir(parents=True)
            for number, image in enumerate(crops[index :: len(SETS)]):
                image.save(work / name / f"{name}_{number:04d}.png")
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in sorted((work / "members").glob("*.png"))]

    def save(step, unet, scheduler):
        if step in checkpoints:
            DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(work / "checkpoints" / f"step-{step}",
                                                                         safe_serialization=True)
            print(f"step {step}: {time.perf_counter() - started:.0f} s", flush=True)

    started = time.perf_counter()
    saved = sorted(int(folder.name.removeprefix("step-")) for folder in (work / "checkpoints").glob("step-*"))
    if saved and saved[-1] < max(checkpoints):  # continue from the last checkpoint, with a fresh optimiser
        unet = UNet2DModel.from_pretrained(work / "checkpoints" / f"step-{saved[-1]}" / "unet")
        train_ddpm(to_model_input(images), max(checkpoints), seed, on_step=save, unet=unet, first_step=saved[-1])
    elif not saved:
        train_ddpm(to_model_input(images), max(checkpoints), seed, on_step=save)
    checkpoints = sorted({*checkpoints, *saved})
    aucs = {step: loss_auc(work, work / "checkpoints" / f"step-{step}", seed) for step in checkpoints}
    print("single-image loss AUC by training steps:", aucs)
    weak = [step for step, value in aucs.items() if value <= max_loss_auc]
    chosen = max(weak, key=aucs.get) if weak else min(checkpoints)
    shutil.copytree(work / "checkpoints" / f"step-{chosen}", work / "model")
    (work / "model" / "benchmark.json").write_text(json.dumps({"steps": chosen, "loss_auc_by_steps": aucs}))
    print(f"kept the model after {chosen} steps")


def loss_auc(work: Path, model: Path, seed: int) -> float:
    """AUC of the single-image loss attack (loss at t = 100, 5 draws; lower is member), members vs heldout_a."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from cdi_audit.features.loss import DenoisingLoss
    from cdi_audit.inputs.images import scan_image_set
    from cdi_audit.models.loading import load_target
    from cdi_audit.pipeline.extraction import extract_features

    target = load_target(model, torch.device("cpu"))
    members, heldout = (scan_image_set(work / name).records for name in ("members", "heldout_a"))
    table, _ = extract_features([*members, *heldout], target, [DenoisingLoss()], seed=seed, batch_size=64)
    losses = table.rows([record.key for record in [*members, *heldout]])[:, 0]
    labels = np.r_[np.ones(len(members)), np.zeros(len(heldout))]
    return round(float(roc_auc_score(labels, -losses)), 4)


def extract(work: Path, label: str, spec: str, seed: int) -> Path:
    """The features of every image, with the code of this checkout, saved as ``work/features-LABEL.npz``."""
    import numpy as np
    import torch

    from cdi_audit.features.registry import extractors_for
    from cdi_audit.inputs.images import scan_image_set
    from cdi_audit.models.loading import load_target
    from cdi_audit.pipeline.extraction import extract_features

    out = work / f"features-{label}.npz"
    if out.exists():
        print(f"reusing {out}")
        return out
    target = load_target(work / "model", torch.device("cpu"))
    extractors, _ = extractors_for(spec, target)
    records = {name: scan_image_set(work / name).records for name in SETS}
    every = [record for name in SETS for record in records[name]]
    started = time.perf_counter()
    table, _ = extract_features(every, target, extractors, seed=seed, batch_size=64)
    print(f"extracted {len(table.columns)} columns of {len(every)} images in {time.perf_counter() - started:.0f} s")
    owners = {column: extractor.name for extractor in extractors for column in extractor.columns}
    np.savez(out, matrix=table.scoring_matrix([record.key for record in every]), columns=np.array(table.columns),
             extractors=np.array([owners[column] for column in table.columns]),
             groups=np.array([name for name in SETS for _ in records[name]]))
    return out


def feature_sets(extractors: list[str]) -> dict[str, list[int]]:
    """Column indices of the presets and of each extractor alone."""
    from cdi_audit.features.catalogue import PRESETS

    sets = {name: [i for i, owner in enumerate(extractors) if owner in PRESETS[name]] for name in ("fast", "full")}
    for owner in dict.fromkeys(extractors):
        sets[owner] = [i for i, other in enumerate(extractors) if other == owner]
    return {name: columns for name, columns in sets.items() if columns}


def load_features(work: Path, labels: list[str]) -> dict:
    """The columns of one or more features files side by side (the same images in the same order)."""
    import numpy as np

    parts = [np.load(work / f"features-{label}.npz") for label in labels]
    if any(not np.array_equal(part["groups"], parts[0]["groups"]) for part in parts):
        raise SystemExit("the features files hold different images")
    return {"matrix": np.concatenate([part["matrix"] for part in parts], axis=1), "groups": parts[0]["groups"],
            **{key: np.concatenate([part[key] for part in parts]) for key in ("columns", "extractors")}}


def power(data: dict, sizes: tuple[int, ...], repeats: int, permutations: int, seed: int, only: list[str] | None,
          combined: dict[str, list[str]]) -> dict:
    """Members and null curves of every feature set, with the permutation test and the reference rule.
    ``combined``: more feature sets, each the union of the named sets."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from cdi_audit.statistics import scoring
    from cdi_audit.statistics.testing import run_test

    matrix, groups = data["matrix"], data["groups"]
    rows = {name: np.flatnonzero(groups == name) for name in SETS}
    sets = feature_sets(list(data["extractors"]))
    for name, parts in combined.items():
        sets[name] = sorted({column for part in parts for column in sets[part]})
    if only:
        sets = {name: columns for name, columns in sets.items() if name in only}
    loss = list(data["columns"]).index("loss_t100") if "loss_t100" in list(data["columns"]) else None
    summary = {"sizes": list(sizes), "repeats": repeats, "permutations": permutations, "penalty": scoring.PENALTY,
               "sets": {name: [str(data["columns"][i]) for i in columns] for name, columns in sets.items()}}
    if loss is not None:  # lower loss = member: the single-image attack scores -loss
        values = matrix[np.r_[rows["members"], rows["heldout_a"]], loss]
        labels = np.r_[np.ones(len(rows["members"])), np.zeros(len(rows["heldout_a"]))]
        summary["loss_auc"] = float(roc_auc_score(labels, -values))
    results = {}
    for name, columns in sets.items():
        started = time.perf_counter()
        curves = {test: {"members": {}, "null": {}} for test in ("permutation", "cdi-reference")}
        for n in sizes:
            for repeat in range(repeats):
                rng = np.random.default_rng([seed, n, repeat])
                reference = rng.choice(rows["heldout_a"], n, replace=False)
                draws = {"members": rng.choice(rows["members"], n, replace=False),
                         "null": rng.choice(rows["heldout_b"], n, replace=False)}
                test_seed = int(rng.integers(2**31 - 1))
                for kind, suspect in draws.items():
                    chosen = np.r_[suspect, reference]
                    is_suspect = np.r_[np.ones(n, bool), np.zeros(n, bool)]
                    for test in curves:
                        p = run_test(test, matrix[np.ix_(chosen, columns)], is_suspect, test_seed, permutations).p_value
                        curves[test][kind].setdefault(n, []).append(p)
        results[name] = {"columns": len(columns), "seconds": round(time.perf_counter() - started, 1)}
        for test, kinds in curves.items():
            medians = {n: float(np.median(values)) for n, values in kinds["members"].items()}
            null = np.concatenate([values for values in kinds["null"].values()])
            results[name][test] = {
                "median_p": medians,
                "images_needed": min((n for n, p in medians.items() if p < NEEDED_P), default=None),
                "null_rate_01": float(np.mean(null < 0.01)), "null_rate_05": float(np.mean(null < 0.05)),
                "null_runs": len(null), "p_values": {kind: {str(n): v for n, v in by_n.items()}
                                                     for kind, by_n in kinds.items()},
            }
        print(name, {test: (results[name][test]["images_needed"], results[name][test]["null_rate_01"],
                            results[name][test]["null_rate_05"]) for test in curves}, f"{results[name]['seconds']} s")
    summary["feature_sets"] = results
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cdi-audit-detection-power-512"))
    parser.add_argument("--label", default="current", help="names the features file and the JSON")
    parser.add_argument("--members", type=int, default=512)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[6000, 7500, 9000],
                        help="training steps at which the model is saved; one of them is kept")
    parser.add_argument("--max-loss-auc", type=float, default=0.56)
    parser.add_argument("--features", default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--only", nargs="*", help="feature sets to evaluate (default: all)")
    parser.add_argument("--extra", nargs="*", default=[], help="labels of more features files whose columns join")
    parser.add_argument("--combine", nargs="*", default=[], metavar="NAME=SET+SET",
                        help="more feature sets, each the union of named sets (e.g. full+flip=full+flip)")
    parser.add_argument("--penalty", type=float, default=None, help="the scoring model's 1/C (default: the tool's)")
    parser.add_argument("--out-label", default=None, help="names the JSON (default: --label)")
    parser.add_argument("--stage", choices=("prepare", "extract", "power", "all"), default="all")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work, args.members, args.checkpoints, args.seed, args.max_loss_auc)
    if args.stage == "prepare":
        return
    extract(args.work, args.label, args.features, args.seed)
    if args.stage == "extract":
        return
    if args.penalty is not None:
        from cdi_audit.statistics import scoring

        scoring.PENALTY = args.penalty
    combined = dict(item.split("=", 1) for item in args.combine)
    summary = power(load_features(args.work, [args.label, *args.extra]), tuple(args.sizes), args.repeats,
                    args.permutations, args.seed, args.only, {name: sets.split("+") for name, sets in combined.items()})
    out = HERE / "detection_power" / f"{args.out_label or args.label}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}; single-image loss AUC {summary.get('loss_auc')}")


if __name__ == "__main__":
    main()
