"""The Target of Stable Diffusion 1.x / 2.x, and what the text-to-image Targets share: captions through CLIP."""

from __future__ import annotations

import torch

from cdi_audit.inputs.images import ImageRecord
from cdi_audit.models.condition import Condition, Tokens
from cdi_audit.models.deferred import load_now
from cdi_audit.models.family import LoadedParts
from cdi_audit.models.latent import LatentTarget
from cdi_audit.models.target import Conditioning


class StableDiffusionTarget(LatentTarget):
    """Text-conditioned: each image's caption (or the empty caption) through the pipeline's text encoder."""

    conditioning: Conditioning = "text"

    def __init__(self, loaded: LoadedParts) -> None:
        super().__init__(loaded.denoiser, loaded.autoencoder, loaded.schedule, loaded.prediction_type,
                         loaded.device, loaded.description)
        self.text_encoder = self._prepared(loaded.parts["text_encoder"])
        self.tokenizer = loaded.parts["tokenizer"]

    def encode_condition(self, records: list[ImageRecord]) -> Condition:
        return self.condition_for([record.caption for record in records], [None] * len(records),
                                  [record.path for record in records])

    def condition_for(self, captions: list[str | None], labels: list[int | None], paths=None) -> Condition:
        """The condition of images with these captions (None: the empty caption)."""
        tokens = self.tokenize([caption or "" for caption in captions])
        return Condition(self.encode_tokens({name: t.ids for name, t in tokens.items()}))

    def null_condition(self, condition: Condition) -> Condition:
        """The empty caption, as the pipeline encodes its unconditional branch."""
        tokens = self.tokenize([""] * len(condition))
        return condition.replaced(**self.encode_tokens({name: t.ids for name, t in tokens.items()}))

    def tokenize(self, captions: list[str]) -> dict[str, Tokens]:
        """Token ids by tokenizer (B, model_max_length): BOS, the caption, EOS, then padding, as the pipeline
        builds them."""
        return {"text": clip_tokens(self.tokenizer, captions)}

    def encode_tokens(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The text part of the condition: the CLIP encoder's last states (B, tokens, width)."""
        return {"encoder_hidden_states": self.text_encoder(ids["text"].to(self.device))[0].float()}

    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        """CLIP text states (B, tokens, width), padded to the tokenizer's length as the pipeline does."""
        return self.condition_for(captions, [None] * len(captions))["encoder_hidden_states"]

    def load_weights(self) -> None:
        super().load_weights()
        load_now(self.text_encoder)

    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        return self.denoiser(z_t, time, encoder_hidden_states=condition["encoder_hidden_states"]).sample


def clip_tokens(tokenizer, captions: list[str]) -> Tokens:
    """A CLIP tokenizer's ids for ``captions``, padded and truncated to its length as the pipelines do."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return Tokens(ids, tokenizer.eos_token_id, tokenizer.pad_token_id)
