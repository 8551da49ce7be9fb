"""Which features carry the signal on rectified-flow models: `cdi-audit evaluate` on tiny SD3 and Flux models.

Builds (once, cached in ``--work``) 64 captioned 16 px shapes as members and 64 as non-members, and the tiny
SD3 (without T5) and Flux transformers of the tests (``tests/tiny_flow.py``) trained on the members with the
diffusers flow-matching recipe (sigma logit-normal, target eps - z0; 800 passes over the members for SD3, 600 for Flux).
Then, for each model:

- ``cdi-audit evaluate --features full``: AUC per feature set and the images an audit needs per set;
- each ``multi_loss`` column's single-feature AUC (members vs non-members) beside the sigma its nominal
  level maps to, to see where along the flow path the signal sits.

    python benchmarks/flow_models.py [--work DIR] [--repeats 20] [--permutations 100]

Keep the machine otherwise idle (two torch processes on two cores slow each other ~10x). Results are
recorded by hand in ``benchmarks/RESULTS.md``; the raw numbers go to ``benchmarks/flow_models.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

PER_SET = 64
STEPS = {"sd3": 1600, "flux": 1200}  # steps of 32 rows: 800 passes over the 64 members for SD3, 600 for Flux


def build(work: Path) -> dict[str, float]:
    """The image folders and both trained models (skipped when present); training seconds per model."""
    from tiny_flow import train_tiny_flux, train_tiny_sd3
    from tiny_pipelines import write_captioned_shapes

    for name, seed in (("members", 41), ("nonmembers", 42)):
        if not (work / name).is_dir():
            write_captioned_shapes(work / name, PER_SET, seed)
    seconds = {}
    for name, train in (("sd3", train_tiny_sd3), ("flux", train_tiny_flux)):
        if not (work / name / "model_index.json").is_file():
            start = time.perf_counter()
            train(work / "members", work / name, steps=STEPS[name])
            seconds[name] = round(time.perf_counter() - start, 1)
    return seconds


def evaluate(work: Path, model: str, repeats: int, permutations: int) -> dict:
    """``cdi-audit evaluate --features full`` on one model, as a user runs it; its JSON."""
    out = work / f"evaluate-{model}"
    command = [sys.executable, "-m", "cdi_audit", "evaluate", "--members", str(work / "members"), "--nonmembers",
               str(work / "nonmembers"), "--model", str(work / model), "--features", "full", "--repeats",
               str(repeats), "--permutations", str(permutations), "--out", str(out), "--jobs", "1", "--json"]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"evaluate failed ({completed.returncode}): {completed.stderr[-2000:]}")
    result = json.loads(completed.stdout)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def multi_loss_by_sigma(work: Path, model: str) -> list[dict]:
    """Each multi_loss column's AUC (members scored higher when their loss is lower) and its sigma."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from cdi_audit.features.registry import extractors_for
    from cdi_audit.inputs.conditions import with_captions
    from cdi_audit.inputs.images import scan_image_set
    from cdi_audit.models.loading import load_target
    from cdi_audit.pipeline.extraction import extract_features

    target = load_target(work / model, torch.device("cpu"))
    extractors = [e for e in extractors_for("full", target)[0] if e.name == "multi_loss"]
    records = {name: with_captions(scan_image_set(work / name))[0].records for name in ("members", "nonmembers")}
    every = [*records["members"], *records["nonmembers"]]
    table, _ = extract_features(every, target, extractors, seed=0, batch_size=32)
    labels = np.r_[np.ones(len(records["members"])), np.zeros(len(records["nonmembers"]))]
    matrix = table.rows([record.key for record in every])
    rows = []
    for index, column in enumerate(table.columns):
        values = matrix[:, index]
        nominal = int(column.rsplit("_t", 1)[1])
        sigma = float(target.schedule.sigmas[target.schedule.level(nominal)])
        auc = float(roc_auc_score(labels, -values))
        rows.append({"column": column, "sigma": round(sigma, 3), "auc": round(auc, 3)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cdi-audit-flow-models"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=100)
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    torch.set_num_threads(2)
    arguments.work.mkdir(parents=True, exist_ok=True)
    results = {"training_seconds": build(arguments.work), "models": {}}
    for model in STEPS:
        evaluation = evaluate(arguments.work, model, arguments.repeats, arguments.permutations)
        results["models"][model] = {
            "wall_seconds": evaluation["wall_seconds"],
            "discrimination": evaluation["discrimination"],
            "images_needed": evaluation["images_needed"],
            "false_positive_rates": evaluation["false_positive_rates"],
            "multi_loss_by_sigma": multi_loss_by_sigma(arguments.work, model),
        }
        print(json.dumps({model: results["models"][model]["multi_loss_by_sigma"]}), flush=True)
    (HERE / "flow_models.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
