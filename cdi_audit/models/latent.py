"""Latent diffusion models: a denoiser working in an autoencoder's latent space.

Three families share this adapter (methods.md section 0):
- LDM: unconditional ``UNet2DModel`` on the latents of a VQ autoencoder;
- DiT: class-conditional ``DiTTransformer2DModel`` (learned variance: 2C output channels);
- Stable Diffusion 1.x / 2.x: ``UNet2DConditionModel`` conditioned on CLIP text embeddings.
Images are encoded once per batch by the posterior mean (not a sample), scaled
as z0 = scaling_factor * (mean - shift_factor).
"""

from __future__ import annotations

import torch

from cdi_audit.errors import InputProblem
from cdi_audit.inputs.images import ImageRecord
from cdi_audit.models.condition import Condition, Tokens
from cdi_audit.models.deferred import load_now, module_class_name
from cdi_audit.models.schedule import NoiseSchedule
from cdi_audit.models.target import Conditioning, Target
from cdi_audit.results.schema import ModelInfo


class LatentTarget(Target):
    def __init__(
        self,
        denoiser: torch.nn.Module,
        autoencoder: torch.nn.Module,
        schedule: NoiseSchedule,
        prediction_type: str,
        device: torch.device,
        description: ModelInfo,
        text_encoder: torch.nn.Module | None = None,
        tokenizer=None,
    ) -> None:
        super().__init__(schedule, prediction_type, denoiser.config.in_channels, device, description)
        self.denoiser = denoiser.to(device).eval().requires_grad_(False)
        self.autoencoder = autoencoder.to(device).eval().requires_grad_(False)
        self.text_encoder = None if text_encoder is None else text_encoder.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.conditioning: Conditioning = self._conditioning()
        config = self.autoencoder.config
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or 1.0)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)

    def _conditioning(self) -> Conditioning:
        kind = module_class_name(self.denoiser)
        if kind == "UNet2DConditionModel":
            return "text"
        if kind == "DiTTransformer2DModel":
            return "class"
        return "none"

    @property
    def num_classes(self) -> int:
        """Class ids run 0..num_classes-1; the id num_classes is the null (unconditional) class."""
        return int(self.denoiser.config.num_embeds_ada_norm)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        encoded = self.autoencoder.encode(pixels)
        mean = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        return self.scaling_factor * (mean.float() - self.shift_factor)

    @property
    def has_decoder(self) -> bool:
        return True

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (B, 3, H, W); the inverse of ``encode`` up to the autoencoder's error."""
        return self.autoencoder.decode(z0 / self.scaling_factor + self.shift_factor).sample.float()

    def encode_condition(self, records: list[ImageRecord]) -> Condition | None:
        if self.conditioning == "class":
            missing = [str(record.path) for record in records if record.label is None]
            if missing:
                raise InputProblem(
                    f"This class-conditional model needs a class id for every image, and {missing[0]} has none; "
                    "give labels in a labels.csv (file,label) or put images in one sub-folder per class id."
                )
            outside = [r for r in records if not 0 <= r.label < self.num_classes]
            if outside:
                raise InputProblem(f"{outside[0].path} has class id {outside[0].label}; this model knows "
                                   f"ids 0 to {self.num_classes - 1}.")
        return self.condition_for([record.caption for record in records], [record.label for record in records])

    def condition_for(self, captions: list[str | None], labels: list[int | None]) -> Condition | None:
        """The condition of images with these captions and class ids (one each; None where absent)."""
        if self.conditioning == "class":
            return Condition({"class_labels": torch.tensor(labels, dtype=torch.long, device=self.device)})
        if self.conditioning == "text":
            return Condition(self.encode_tokens({name: tokens.ids for name, tokens in
                                                 self.tokenize([caption or "" for caption in captions]).items()}))
        return None

    def null_condition(self, condition: Condition) -> Condition:
        """The null class (id ``num_classes``), or the empty caption as the pipeline encodes it."""
        if self.conditioning == "class":
            return condition.replaced(class_labels=torch.full_like(condition["class_labels"], self.num_classes))
        if self.conditioning == "text":
            return condition.replaced(**self.encode_tokens(
                {name: tokens.ids for name, tokens in self.tokenize([""] * len(condition)).items()}))
        raise NotImplementedError("an unconditional model has no null condition")

    def tokenize(self, captions: list[str]) -> dict[str, Tokens]:
        """Token ids by tokenizer (B, model_max_length): BOS, the caption, EOS, then padding, as the pipeline
        builds them."""
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return {"text": Tokens(ids, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)}

    def encode_tokens(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The text part of the condition for token ids by tokenizer: the CLIP states (B, tokens, width)."""
        return {"encoder_hidden_states": self.text_encoder(ids["text"].to(self.device))[0].float()}

    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        """CLIP text embeddings (B, tokens, width), padded to the tokenizer's length as the pipeline does."""
        return self.condition_for(captions, [None] * len(captions))["encoder_hidden_states"]

    def load_weights(self) -> None:
        load_now(self.denoiser, self.autoencoder, self.text_encoder)

    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        if self.conditioning == "text":
            return self.denoiser(z_t, time, encoder_hidden_states=condition["encoder_hidden_states"]).sample
        if self.conditioning == "class":
            return self.denoiser(z_t, timestep=time, class_labels=condition["class_labels"]).sample
        return self.denoiser(z_t, time).sample
