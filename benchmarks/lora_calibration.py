"""What calibrating an adapter audit against its base buys: images needed per set, and the null rate.

Builds (once, cached in ``--work``) a tiny Stable Diffusion base trained on 64 photograph crops (16 px,
captioned), a LoRA on it trained on 64 other crops (the members), and, for the case of a base that saw the
suspect images, two more bases (one trained on the suspect set alone, one on it among four times as many
others) each with a LoRA trained on yet other crops. Features of
every image are computed once per model by cdi-audit itself (default features, seed 0); the audits are then
simulated on draws of those feature rows through the package's own decision (``verdict/decision.py``):

- **power**: members against never-seen images, n per set drawn from 64 each, uncalibrated (the adapted
  model's features) and calibrated (adapted minus base, per image): the median p-value per n, and the
  smallest n where it falls below alpha;
- **null rate**: two disjoint sets of never-seen images (64 each, drawn from a pool of 320), calibrated and
  uncalibrated, with and without the control-model gate;
- **a base that saw the suspect images**, with an adapter that did not: how often the calibrated audit calls
  it evidence, with and without the gate (the control-model rule of ``verdict/control_model.py``).

    python benchmarks/lora_calibration.py [--work DIR] [--draws 40] [--permutations 200]

Keep the machine otherwise idle (two torch processes on two cores slow each other ~10x). Results are
recorded by hand in ``benchmarks/RESULTS.md``; the raw numbers go to ``benchmarks/lora_calibration.json``.
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
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "sample_data"))

MEMBERS = 64
POOL = 320


FOLDERS = {"base_data": MEMBERS, "members": MEMBERS, "unseen": POOL, "suspect": MEMBERS,
           "other_lora_data": MEMBERS, "broad_extra": 4 * MEMBERS}
CAPTION = "a photograph"


def write_photo_crops(work: Path) -> None:
    """Distinct crops of the photographs that ship with scikit-learn and scikit-image (``sample_data``'s
    source; their content and difficulty vary as photographs do), split into the folders, each crop with the
    caption file a text-to-image audit reads."""
    import numpy as np
    from make_sample_data import random_crops, source_photographs

    crops = random_crops(source_photographs(), sum(FOLDERS.values()), np.random.default_rng(30))
    start = 0
    for name, count in FOLDERS.items():
        (work / name).mkdir(parents=True)
        for number, crop in enumerate(crops[start : start + count]):
            crop.save(work / name / f"{name}_{number:03d}.png")
            (work / name / f"{name}_{number:03d}.txt").write_text(CAPTION)
        start += count
    broad = work / "broad_data"  # a broad base's data: the suspect images among four times as many others
    shutil.copytree(work / "broad_extra", broad)
    for path in (work / "suspect").iterdir():
        shutil.copy(path, broad / path.name)


def build(work: Path) -> dict[str, Path]:
    """Image folders, bases and adapters under ``work`` (reused when present)."""
    from diffusers import StableDiffusionPipeline
    from tiny_lora import train_unet_lora
    from tiny_pipelines import train_tiny_text_to_image

    if not (work / "broad_data").exists():
        write_photo_crops(work)
    models = {}
    for name, data, steps in (("base", "base_data", 600), ("base_saw_suspect", "suspect", 600),
                              ("broad_base", "broad_data", 400)):
        if not (work / name / "model_index.json").exists():
            started = time.perf_counter()
            train_tiny_text_to_image(work / data, work / name, steps=steps)
            print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
        models[name] = work / name
    for name, base, data in (("lora", "base", "members"), ("lora_elsewhere", "base_saw_suspect", "other_lora_data"),
                             ("broad_lora_elsewhere", "broad_base", "other_lora_data"),
                             ("broad_lora", "broad_base", "members")):
        if not (work / name / "pytorch_lora_weights.safetensors").exists():
            started = time.perf_counter()
            train_unet_lora(StableDiffusionPipeline, work / base, work / data, work / name, steps=400)
            print(f"{name}: trained in {time.perf_counter() - started:.0f} s", flush=True)
        models[name] = work / name / "pytorch_lora_weights.safetensors"
    return models


def features(work: Path, base: Path, adapter: Path | None, folders: list[str]):
    """cdi-audit's default features of every image in ``folders`` on ``base`` (+ ``adapter``), cached."""
    import torch

    from cdi_audit.cache import FeatureStore
    from cdi_audit.features.registry import extractors_for
    from cdi_audit.inputs.conditions import with_captions
    from cdi_audit.inputs.images import scan_image_set
    from cdi_audit.models.adapters import Adapter
    from cdi_audit.models.loading import load_target
    from cdi_audit.pipeline.extraction import extract_features

    target = load_target(base, torch.device("cpu"), adapters=(Adapter(adapter),) if adapter else ())
    extractors, _ = extractors_for("auto", target)
    sets = [with_captions(scan_image_set(work / folder))[0] for folder in folders]
    records = [record for images in sets for record in images.records]
    table, summary = extract_features(records, target, extractors, 0, 32, FeatureStore(work / "cache"))
    print(f"features of {len(records)} images on {base.name}{'+' + adapter.parent.name if adapter else ''}: "
          f"{summary.seconds:.0f} s", flush=True)
    return table, {folder: images.keys for folder, images in zip(folders, sets, strict=True)}


def _draw(keys: tuple[str, ...], n: int, rng, exclude=()) -> list[str]:
    pool = [key for key in keys if key not in set(exclude)]
    return [pool[i] for i in rng.choice(len(pool), n, replace=False)]


def scored_tables(tables: dict, adapted: str, base: str) -> dict:
    """What each way of scoring an adapter audit gives the scoring model, and the base's own features."""
    from cdi_audit.features.table import CALIBRATED_SUFFIX, FeatureTable, calibrated

    adapted_table, _ = tables[adapted]
    both = calibrated(adapted_table, tables[base][0])  # cdi-audit's default: features and their change
    change = [i for i, column in enumerate(both.columns) if column.endswith(CALIBRATED_SUFFIX)]
    change_only = FeatureTable(keys=both.keys, columns=tuple(both.columns[i] for i in change),
                               values=both.values[:, change], log_columns=frozenset())
    return {"features": adapted_table, "change": change_only, "default": both, "base": tables[base][0]}


# How each rule decides, from the decisions on the tables above: (table, gated by the base's audit?).
RULES = {
    "uncalibrated": ("features", False),
    "uncalibrated_gated": ("features", True),  # --no-calibration
    "change_only": ("change", False),
    "change_only_gated": ("change", True),
    "default_ungated": ("default", False),
    "default": ("default", True),  # cdi-audit's default
}


def _audits(tables: dict, adapted: str, base: str, suspect_folder: str, n: int, draws: int, permutations: int,
            alpha: float) -> dict[str, list]:
    """``draws`` simulated audits of n suspect images (from ``suspect_folder``) against n never-seen ones:
    p-values and AUCs per table, and the verdict under each rule of RULES."""
    import numpy as np

    from cdi_audit.verdict.control_model import judge_with_control
    from cdi_audit.verdict.decision import decide

    scored = scored_tables(tables, adapted, base)
    keys = tables[adapted][1]
    out: dict[str, list] = {}
    for draw in range(draws):
        rng = np.random.default_rng([n, draw])
        suspect, reference = _draw(keys[suspect_folder], n, rng), _draw(keys["unseen"], n, rng)
        decisions = {name: decide(table, suspect, reference, alpha, "permutation", draw, permutations,
                                  curve_resamples=0) for name, table in scored.items()}
        rows = {f"p_{name}": decision.outcome.p_value for name, decision in decisions.items()}
        rows.update({f"auc_{name}": decision.effect.auc for name, decision in decisions.items()})
        for rule, (table, gated) in RULES.items():
            decision = decisions[table]
            if gated:
                decision, _ = judge_with_control(decision, decisions["base"], alpha, draw, against_base=True)
            rows[f"verdict_{rule}"] = decision.verdict
        # A rule we measured and rejected: the features and their change, blocked only when the base alone
        # finds evidence (no effect-size comparison).
        rows["verdict_default_blocked_if_base_separates"] = decisions["default"].verdict \
            if decisions["base"].verdict != "evidence" else "inconclusive"
        for key, value in rows.items():
            out.setdefault(key, []).append(value)
    return out


def _summary(audits: dict[str, list]) -> dict:
    import numpy as np

    summary = {}
    for key, values in audits.items():
        if key.startswith("verdict"):
            summary[key.replace("verdict", "evidence")] = sum(value == "evidence" for value in values)
        else:
            summary["median_" + key] = float(np.median(values))
    return summary


def null_rates(tables: dict, adapted: str, base: str, draws: int, permutations: int, n: int = 32) -> dict:
    """Rejection rates at 0.05 and 0.01 of the permutation test on each table, over ``draws`` audits of two
    disjoint sets of n images neither model saw."""
    import numpy as np

    from cdi_audit.statistics.testing import permutation_test

    scored = scored_tables(tables, adapted, base)
    unseen = tables[adapted][1]["unseen"]
    p_values: dict[str, list[float]] = {name: [] for name in scored}
    for draw in range(draws):
        order = np.random.default_rng([77, draw]).permutation(len(unseen))[: 2 * n]
        rows = [unseen[i] for i in order]
        is_suspect = np.r_[np.ones(n, bool), np.zeros(n, bool)]
        for name, table in scored.items():
            p_values[name].append(permutation_test(table.scoring_matrix(rows), is_suspect, permutations,
                                                   seed=draw).p_value)
    return {name: {"draws": draws, "n_per_set": n, "rejected_at_0.05": int(np.sum(np.array(values) < 0.05)),
                   "rejected_at_0.01": int(np.sum(np.array(values) < 0.01))} for name, values in p_values.items()}


def images_needed(power: dict, alpha: float) -> dict[str, int | None]:
    """Per table, the smallest n per set whose median p-value is below alpha (None: not within the grid)."""
    tables = [key.removeprefix("median_p_") for key in next(iter(power.values())) if key.startswith("median_p_")]
    return {table: next((n for n, row in power.items() if row[f"median_p_{table}"] < alpha), None)
            for table in tables}


SIZES = (10, 16, 24, 32, 48, 64)


def simulate(tables: dict, draws: int, permutations: int, alpha: float, null_draws: int) -> dict:
    results: dict = {"draws": draws, "permutations": permutations, "alpha": alpha}
    for scenario, adapted, base in (("broad_base", "broad_adapted", "broad_base"),
                                    ("narrow_base", "adapted", "base")):
        power = {n: _summary(_audits(tables, adapted, base, "members", n, draws, permutations, alpha))
                 for n in SIZES}
        results[f"power_{scenario}"] = power
        results[f"images_needed_{scenario}"] = images_needed(power, alpha)
        print(scenario, results[f"images_needed_{scenario}"], flush=True)
        results[f"null_{scenario}"] = null_rates(tables, adapted, base, null_draws, permutations)
        print(scenario, "null", results[f"null_{scenario}"], flush=True)
    for scenario, adapted, base in (("broad_base_saw_suspect", "broad_adapted_elsewhere", "broad_base"),
                                    ("narrow_base_saw_suspect", "adapted_elsewhere", "base_saw_suspect")):
        results[scenario] = _summary(_audits(tables, adapted, base, "suspect", MEMBERS, draws, permutations, alpha))
        print(scenario, results[scenario], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cdi-audit-lora-photos"))
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--null-draws", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(arguments.threads))
    import torch

    torch.set_num_threads(arguments.threads)
    arguments.work.mkdir(parents=True, exist_ok=True)
    models = build(arguments.work)
    tables = {}
    for name, base, adapter, folders in (
            ("base", models["base"], None, ["members", "unseen"]),
            ("adapted", models["base"], models["lora"], ["members", "unseen"]),
            ("base_saw_suspect", models["base_saw_suspect"], None, ["suspect", "unseen"]),
            ("adapted_elsewhere", models["base_saw_suspect"], models["lora_elsewhere"], ["suspect", "unseen"]),
            ("broad_base", models["broad_base"], None, ["suspect", "unseen", "members"]),
            ("broad_adapted", models["broad_base"], models["broad_lora"], ["members", "unseen"]),
            ("broad_adapted_elsewhere", models["broad_base"], models["broad_lora_elsewhere"], ["suspect", "unseen"])):
        tables[name] = features(arguments.work, base, adapter, folders)
    results = simulate(tables, arguments.draws, arguments.permutations, arguments.alpha, arguments.null_draws)
    (HERE / "lora_calibration.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
