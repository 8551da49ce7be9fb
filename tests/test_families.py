"""A model family is one module: a family defined here, registered at run time, audits like a built-in one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from feature_checks import assert_same_audit

from cdi_audit.errors import ModelUnavailable
from cdi_audit.features.registry import resolve_extractors
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.models.condition import Condition
from cdi_audit.models.families import family_for, registered_families, temporarily_registered
from cdi_audit.models.family import Component, Family, LoadedParts, PipelineIndex
from cdi_audit.models.loading import load_target
from cdi_audit.models.target import Target
from cdi_audit.pipeline.extraction import extract_features

CPU = torch.device("cpu")


class ToyTarget(Target):
    """A pixel denoiser kept under denoiser/ instead of unet/, with a Target of its own."""

    def __init__(self, loaded: LoadedParts) -> None:
        super().__init__(loaded.schedule, loaded.prediction_type, 3, loaded.device, loaded.description)
        self.network = loaded.denoiser.to(loaded.device).eval().requires_grad_(False)

    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        return self.network(z_t, time).sample


class ToyFamily(Family):
    name = "toy"
    label = "toy pixel pipeline"
    display_name = "toy"
    pipeline_words = "a ToyPipeline"
    published = "2026-01"

    def recognises(self, index: PipelineIndex) -> bool:
        return index.pipeline == "ToyPipeline"

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        return (Component("denoiser", frozenset({"UNet2DModel"}), role="denoiser"),)

    def build(self, loaded: LoadedParts) -> ToyTarget:
        return ToyTarget(loaded)


@pytest.fixture
def toy_model(trained_tiny_model, tmp_path: Path) -> Path:
    """The trained tiny DDPM saved as a "ToyPipeline" whose UNet lives under denoiser/."""
    copy = shutil.copytree(trained_tiny_model[0], tmp_path / "toy")
    (copy / "unet").rename(copy / "denoiser")
    (copy / "model_index.json").write_text(json.dumps({
        "_class_name": "ToyPipeline", "denoiser": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"]}))
    return copy


def test_a_family_defined_at_run_time_loads_and_audits_like_a_built_in_one(trained_tiny_model, toy_model) -> None:
    model, members, nonmembers = trained_tiny_model
    with pytest.raises(ModelUnavailable, match="ToyPipeline"):
        load_target(toy_model, CPU)
    records = scan_image_set(members).records[:10] + scan_image_set(nonmembers).records[:10]
    extractors = resolve_extractors("fast")
    with temporarily_registered(ToyFamily()):
        toy = load_target(toy_model, CPU)
        assert isinstance(toy, ToyTarget) and toy.description.family == "toy pixel pipeline"
        assert toy.sample_size == 16 and toy.schedule.train_steps == 1000
        toy_table, _ = extract_features(records, toy, extractors, seed=0, batch_size=20)
    assert "toy" not in {family.name for family in registered_families()}
    built_in, _ = extract_features(records, load_target(model, CPU), extractors, seed=0, batch_size=20)
    keys = [record.key for record in records]
    assert_same_audit(toy_table, built_in, keys[:10], keys[10:])


def test_the_built_in_families_recognise_disjoint_pipelines() -> None:
    indexes = {
        "pixel": PipelineIndex("DDPMPipeline", {"unet": "UNet2DModel", "scheduler": "DDPMScheduler"}),
        "ldm": PipelineIndex("LDMPipeline", {"unet": "UNet2DModel", "vqvae": "VQModel"}),
        "dit": PipelineIndex("DiTPipeline", {"transformer": "DiTTransformer2DModel", "vae": "AutoencoderKL"}),
        "sd": PipelineIndex("StableDiffusionPipeline", {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL",
                                                        "text_encoder": "CLIPTextModel"}),
        "sdxl": PipelineIndex("StableDiffusionXLPipeline", {
            "unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
            "text_encoder_2": "CLIPTextModelWithProjection"}),
    }
    assert {name: family_for(index).name for name, index in indexes.items()} == {name: name for name in indexes}
    refiner = PipelineIndex("StableDiffusionXLImg2ImgPipeline", {
        "unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder_2": "CLIPTextModelWithProjection"})
    assert family_for(refiner) is None
