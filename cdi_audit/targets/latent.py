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
from cdi_audit.images import ImageRecord
from cdi_audit.result import ModelInfo
from cdi_audit.targets.base import Conditioning, Target
from cdi_audit.targets.deferred import load_now, module_class_name


class LatentTarget(Target):
    def __init__(
        self,
        denoiser: torch.nn.Module,
        autoencoder: torch.nn.Module,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        device: torch.device,
        description: ModelInfo,
        text_encoder: torch.nn.Module | None = None,
        tokenizer=None,
    ) -> None:
        super().__init__(alphas_cumprod, prediction_type, denoiser.config.in_channels, device, description)
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

    def encode_condition(self, records: list[ImageRecord]) -> torch.Tensor | None:
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
            return torch.tensor([record.label for record in records], dtype=torch.long, device=self.device)
        if self.conditioning == "text":
            return self.embed_captions([record.caption or "" for record in records])
        return None

    def reduced_conditions(self, batch) -> dict[str, torch.Tensor]:
        """CLiD's weakened conditions (methods.md section 2): for captions, the first, middle and last
        third of the caption's tokens replaced by the pad token, and the empty caption; for classes,
        the null class (id ``num_classes``)."""
        if self.conditioning == "class":
            return {"null": torch.full_like(batch.condition, self.num_classes)}
        if self.conditioning != "text":
            return {}
        ids = self.tokenize(list(batch.captions))
        reduced = {name: clipped_tokens(ids, part, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
                   for part, name in enumerate(("first", "middle", "last"))}
        embeddings = {name: self.text_encoder(tokens.to(self.device))[0].float() for name, tokens in reduced.items()}
        embeddings["null"] = self.embed_captions([""] * len(batch.captions))
        return embeddings

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids (B, model_max_length): BOS, the caption, EOS, then padding, as the pipeline builds them."""
        return self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        """CLIP text embeddings (B, tokens, width), padded to the tokenizer's length as the pipeline does."""
        return self.text_encoder(self.tokenize(captions).to(self.device))[0].float()

    def load_weights(self) -> None:
        load_now(self.denoiser, self.autoencoder, self.text_encoder)

    def _model_output(self, z_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor | None
                      ) -> torch.Tensor:
        if self.conditioning == "text":
            return self.denoiser(z_t, timesteps, encoder_hidden_states=condition).sample
        if self.conditioning == "class":
            return self.denoiser(z_t, timestep=timesteps, class_labels=condition).sample
        return self.denoiser(z_t, timesteps).sample


def clipped_tokens(ids: torch.Tensor, part: int, eos_id: int, pad_id: int) -> torch.Tensor:
    """``ids`` with the ``part``-th third (0, 1, 2) of each caption's tokens set to ``pad_id``.

    A caption's tokens are those between BOS (position 0) and its first EOS; thirds split n
    tokens at round(n / 3) and round(2 n / 3), so a short caption may have an empty third.
    """
    clipped = ids.clone()
    for row in clipped:
        ends = (row == eos_id).nonzero()
        count = int(ends[0]) - 1 if len(ends) else len(row) - 1
        bounds = [1 + round(count * k / 3) for k in range(4)]
        row[bounds[part] : bounds[part + 1]] = pad_id
    return clipped
