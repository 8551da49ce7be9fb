"""cdi-audit extract-evidence end to end: outputs, caching and determinism, guidance that steers, and (slow)
near-copies of a memorising model's training images found more often than of images it never saw."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE_DATA
from PIL import Image
from scipy.stats import wilcoxon
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.evidence.classifier import towards, train_surrogate
from cdi_audit.evidence.clusters import cluster_pool
from cdi_audit.evidence.embedding import embed_images
from cdi_audit.evidence.pool import generate, to_images
from cdi_audit.evidence.search import relabel_to_kept
from cdi_audit.models.loading import load_target


def search(*arguments: str) -> tuple[int, dict, str]:
    result = CliRunner().invoke(app, ["extract-evidence", *arguments, "--json", "--device", "cpu"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}, result.stderr


def test_outputs_cache_and_determinism(trained_tiny_model, tmp_path: Path) -> None:
    model, members, nonmembers = trained_tiny_model
    arguments = [str(members), "--reference", str(nonmembers), "--model", str(model), "--budget", "40", "--steps",
                 "10", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    code, first, _ = search(*arguments)
    assert code in (0, 1)
    generations = first["generations"]
    assert generations["pool"] == 20 and generations["clusters"] == 5  # K = min(100, pool // 4)
    kept = generations["cohesive_clusters"]
    assert generations["guided"] == (kept * (20 // kept) if kept else 0)
    assert first["model_calls"] == 10 * (generations["pool"] + generations["guided"])
    roles = [image["role"] for image in first["images"]]
    assert roles.count("suspect") == 32 and roles.count("reference") == 40
    share = first["share_comparison"]
    similarities = {role: np.array([i["similarity"] for i in first["images"] if i["role"] == role])
                    for role in ("suspect", "reference")}
    assert share["suspect_matched"] == int((similarities["suspect"] >= share["threshold"]).sum())
    assert share["reference_matched"] == int((similarities["reference"] >= share["threshold"]).sum())
    assert code == int(share["p_value"] < 0.01)
    assert all(-1.0 <= i["similarity"] <= 1.0 + 1e-9 and i["top_mean"] <= i["similarity"] + 1e-9
               for i in first["images"])
    assert json.loads((tmp_path / "out" / "evidence.json").read_text())["images"] == first["images"]
    with Image.open(tmp_path / "out" / "gallery.png") as gallery:
        assert gallery.size == (2 * 96 + 150, 12 * 102 + 24)  # the 12 closest suspect images
    again_code, again, _ = search(*arguments)
    assert again["model_calls"] == 0  # pool and guided generations come back from the cache
    assert again["images"] == first["images"] and again_code == code


def test_a_conditional_model_or_a_tiny_budget_is_refused(trained_tiny_model, tmp_path: Path) -> None:
    from tiny_pipelines import save_tiny_stable_diffusion

    model, members, _ = trained_tiny_model
    code, payload, _ = search(str(members), "--model", str(model), "--budget", "4")
    assert code == 2
    text_model = save_tiny_stable_diffusion(tmp_path / "sd")
    code, payload, _ = search(str(members), "--model", str(text_model), "--budget", "8",
                              "--cache-dir", str(tmp_path / "cache"))
    assert code == 2 and "text-conditional" in payload["error"]["message"]
    code, payload, _ = search(str(members), "--model", str(model), "--budget", "8", "--steps", "2",
                              "--cache-dir", str(tmp_path))
    assert code == 0 and payload["share_comparison"] is None
    assert any("No reference images" in note for note in payload["notes"])


def test_guidance_steers_towards_its_cluster(trained_tiny_model) -> None:
    target = load_target(trained_tiny_model[0], torch.device("cpu"))
    latents = generate(target, "pool", 64, seed=0, steps=10, batch_size=64, store=None)
    embeddings = embed_images(to_images(target, latents, 64))
    clusters = cluster_pool(embeddings, seed=0, max_clusters=8, cohesion=0.0)  # every cluster, most cohesive first
    assert len(clusters.kept) == 8
    classifier = train_surrogate(target, latents, relabel_to_kept(embeddings, clusters), len(clusters.kept), 0,
                                 steps=300)
    centroid = torch.from_numpy(clusters.centroids[clusters.kept[0]]).float()

    def closeness(scale: float) -> np.ndarray:
        """Cosine of each generation to the cluster's centroid; the same 24 starting noises at every scale."""
        guided = generate(target, "steered", 24, seed=1, steps=10, batch_size=24, store=None,
                          guidance=towards(classifier, 0), scale=scale)
        return (embed_images(to_images(target, guided, 24)) @ centroid).numpy()

    unguided, guided = closeness(0.0), closeness(10.0)
    # Paired by starting noise: guidance moves the generations towards the cluster, not just a lucky few.
    assert guided.mean() > unguided.mean() + 0.05, (guided.mean(), unguided.mean())
    assert wilcoxon(guided, unguided, alternative="greater").pvalue < 0.01


@pytest.fixture(scope="module")
def memorising_model() -> tuple[Path, Path, Path]:
    """A 16 px xs DDPM trained 2,000 steps on 16 published sample images (about 75 s, once, into
    .test-models/): it reproduces several of them; 16 unpublished images are the reference. Read-only."""
    from fixture_cache import cached_build
    from trained_models import IMAGE_INPUTS, MEMORISED, TESTS, memorising_ddpm, sample_images

    images = (*sample_images("published", MEMORISED), *sample_images("unpublished", MEMORISED))
    root = cached_build("memorising-ddpm", memorising_ddpm,
                        (TESTS / "conftest.py", SAMPLE_DATA / "make_sample_data.py", *IMAGE_INPUTS, *images))
    return root / "model", root / "suspect", root / "reference"


@pytest.mark.slow
def test_a_memorising_model_reproduces_its_training_images(memorising_model, tmp_path: Path) -> None:
    model, suspect, reference = memorising_model
    code, payload, _ = search(str(suspect), "--reference", str(reference), "--model", str(model), "--budget", "512",
                              "--cache-dir", str(tmp_path))
    share = payload["share_comparison"]
    assert share["suspect_matched"] >= 5 and share["reference_matched"] <= 1
    assert share["p_value"] < 0.01 and code == 1


def test_the_search_joins_the_audit_report_of_the_same_model(sample_audit, trained_tiny_model,
                                                              tmp_path: Path) -> None:
    import shutil

    from pypdf import PdfReader

    _, _, audit_folder = sample_audit
    folder = shutil.copytree(audit_folder, tmp_path / "audit")
    code, payload, _ = search(str(SAMPLE_DATA / "published"), "--reference", str(SAMPLE_DATA / "unpublished"),
                              "--model", str(SAMPLE_DATA / "model"), "--budget", "16", "--steps", "2",
                              "--cache-dir", str(tmp_path / "cache"), "--out", str(folder))
    assert code == 0
    share = payload["share_comparison"]
    pdf = " ".join(" ".join(page.extract_text().split()) for page in PdfReader(folder / "report.pdf").pages)
    assert "Extraction evidence: what the model reproduces" in pdf
    assert (f"suspect {share['suspect_matched']} of 64, reference {share['reference_matched']} of 64 at "
            f"similarity >= 0.85") in pdf
    html = (folder / "report.html").read_text()
    gallery = base64.b64encode((folder / "gallery.png").read_bytes()).decode()
    assert gallery in html
    verified = CliRunner().invoke(app, ["verify", str(folder)])
    assert verified.exit_code == 0, verified.output
    # A search of another model is left out of the report, with a warning.
    search(str(SAMPLE_DATA / "published"), "--model", str(trained_tiny_model[0]), "--budget", "8", "--steps", "1",
           "--cache-dir", str(tmp_path / "cache"), "--out", str(folder))
    rendered = CliRunner().invoke(app, ["report", str(folder), "--html"])
    assert rendered.exit_code == 0 and "searched another model" in rendered.stderr
    assert "Extraction evidence" not in (folder / "report.html").read_text()


@pytest.mark.slow
def test_the_sample_model_reproduces_published_images(tmp_path: Path) -> None:
    """The shipped sample model (trained 6,000 steps on published/) generates near-copies of its training
    images far more often than of images it never saw (about 35 s at this budget; the default budget of 1024
    found 9 of 64 against 1 of 64, p = 0.0084, in about 2 minutes)."""
    code, payload, _ = search(str(SAMPLE_DATA / "published"), "--reference", str(SAMPLE_DATA / "other"),
                              "--model", str(SAMPLE_DATA / "model"), "--budget", "256", "--steps", "25",
                              "--cache-dir", str(tmp_path))
    share = payload["share_comparison"]
    assert share["suspect_matched"] >= 10 and share["reference_matched"] <= 3
    assert share["p_value"] < 0.01 and code == 1
