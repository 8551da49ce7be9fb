"""Black-box access: a model reached only through one image-to-image call, ``vary``.

``vary(image, strength, seed) -> image`` noises the image to the level an
image-to-image pipeline starts from at that strength (``NoiseSchedule.strength_level``:
strength x the training timesteps of a discrete schedule) with noise drawn from
``seed``, and denoises it back with deterministic steps; strength 0 returns the
model's own reconstruction of the image (decode(encode(x)) for latent models,
x itself for pixel models). Images travel as 8-bit RGB arrays (H, W, 3) at the
model's resolution, exactly as they would as PNG over HTTP, so every back end
(a local model, an HTTP endpoint, a command) gives the same bytes for the same
request.

``BlackBoxTarget`` is what the feature stage sees for such a model: no noise
predictions, no gradients, only ``vary``; each completed call can be stored
(``CallStore``) so an interrupted audit resumes without paying for a call twice.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image

from cdi_audit.access import Access
from cdi_audit.models.condition import Condition
from cdi_audit.models.primitives import add_noise, model_step
from cdi_audit.models.target import Conditioning, Target
from cdi_audit.results.schema import ModelInfo

PROTOCOL = "cdi-audit-variation/1"
# Nominal DDIM interval of the local variation (ReDiffuse uses 100 on pixel models; docs/method.md).
DDIM_INTERVAL = 100
Family = Literal["pixel", "latent"]


@dataclass(frozen=True)
class VariationRequest:
    """One call: an 8-bit RGB image (H, W, 3), the noise strength in [0, 1), the noise seed, and the
    image's condition for conditional models (a caption or a class id)."""

    image: np.ndarray
    strength: float
    seed: int
    prompt: str | None = None
    class_label: int | None = None

    def digest(self) -> str:
        """Identifies the request's content (the key of its stored result)."""
        parts = [hashlib.sha256(np.ascontiguousarray(self.image).tobytes()).hexdigest(), str(self.image.shape),
                 repr(float(self.strength)), str(self.seed), repr(self.prompt), repr(self.class_label)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class EndpointInfo:
    """What an audit must know about the model behind an endpoint: the image size it works at, whether
    it is a latent model (whose variations are compared with its reconstruction, not the image) and
    what it is conditioned on."""

    sample_size: int
    family: Family
    conditioning: Conditioning = "none"

    def as_json(self) -> dict:
        return {"protocol": PROTOCOL, "sample_size": self.sample_size, "family": self.family,
                "conditioning": self.conditioning}


class VariationBackend(abc.ABC):
    """Something that answers variation requests. ``identity`` names what produces the outputs (the cache
    key); ``display`` is what reports show. Neither may contain a secret."""

    identity: str
    display: str
    # Whether calls cost time or money, so that each completed one is stored as soon as it returns.
    remote: ClassVar[bool] = True

    @abc.abstractmethod
    def vary(self, request: VariationRequest) -> np.ndarray:
        """The varied image, 8-bit RGB (H, W, 3) of the request's size."""

    def vary_many(self, requests: list[VariationRequest],
                  on_result: Callable[[int, np.ndarray], None]) -> None:
        """Answer every request, calling ``on_result(index, image)`` as each completes."""
        for index, request in enumerate(requests):
            on_result(index, self.vary(request))


def pixels_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (B, 3, H, W) -> 8-bit RGB (B, H, W, 3), rounded as a PNG encoder would see them."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def uint8_to_pixels(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """8-bit RGB (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(content: bytes) -> np.ndarray:
    """An image file's bytes -> 8-bit RGB (H, W, 3); raises ``ValueError`` for anything that is not an image."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"not an image ({error})") from error


class LocalVariation(VariationBackend):
    """Variations computed from a local model with the shared DDIM primitives (``models/primitives.py``).

    Pixel and latent models alike: encode (posterior mean), add noise from the request's seed
    at t, DDIM-denoise t -> t - 100 -> ... -> 0 (nominal steps), decode. We use the primitives
    rather than a diffusers img2img pipeline so that DiT and LDM models (which have none) work
    the same way, with exact integer timesteps and guidance 1 (the conditional branch only).
    ``batch_size`` 1 gives exactly the bytes a server running this model answers (one request
    at a time); larger batches are faster and may differ by one 8-bit level in a few pixels,
    as float sums change with the batch.
    """

    remote = False

    def __init__(self, target: Target, batch_size: int = 16) -> None:
        self.target = target
        self.batch_size = batch_size
        self.identity = f"local|{target.description.fingerprint}|interval={DDIM_INTERVAL}"
        self.display = target.description.path

    @property
    def info(self) -> EndpointInfo:
        return EndpointInfo(self.target.sample_size, "latent" if self.target.has_decoder else "pixel",
                            self.target.conditioning)

    def vary(self, request: VariationRequest) -> np.ndarray:
        results: list[np.ndarray] = []
        self.vary_many([request], lambda _, image: results.append(image))
        return results[0]

    def vary_many(self, requests: list[VariationRequest],
                  on_result: Callable[[int, np.ndarray], None]) -> None:
        """Batches requests of equal strength and size; each result depends on its request only."""
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault((request.strength, request.image.shape), []).append(index)
        for (strength, _), indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                varied = self._vary_batch([requests[i] for i in chunk], strength)
                for index, image in zip(chunk, varied, strict=True):
                    on_result(index, image)

    @torch.no_grad()
    def _vary_batch(self, requests: list[VariationRequest], strength: float) -> np.ndarray:
        target = self.target
        size = target.sample_size
        if any(r.image.shape != (size, size, 3) for r in requests):
            raise ValueError(f"this model works on {size} x {size} RGB images")
        # Draws of one image share its encoding: encode each distinct image once.
        positions: dict[bytes, int] = {}
        rows = [positions.setdefault(r.image.tobytes(), len(positions)) for r in requests]
        distinct = {row: request.image for row, request in zip(rows, requests, strict=True)}  # by first row
        z = target.encode(uint8_to_pixels(np.stack(list(distinct.values())), target.device))[rows]
        schedule = target.schedule
        start = schedule.strength_level(strength)
        if start > 0:
            condition = self._condition(requests)
            noise = torch.stack([
                torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(r.seed)) for r in requests
            ]).to(z.device)
            z = add_noise(schedule, z, noise, start)
            states = schedule.levels_down_from(start, DDIM_INTERVAL)
            with target.precision(True):
                for state, next_state in zip(states, states[1:], strict=False):
                    z = model_step(target, z, state, next_state, condition)
        return pixels_to_uint8(target.decode(z))

    def _condition(self, requests: list[VariationRequest]) -> Condition | None:
        target = self.target
        if target.conditioning == "none":
            return None
        if target.conditioning == "class" and any(r.class_label is None for r in requests):
            raise ValueError("this class-conditional model needs a class_label with every request")
        return target.condition_for([r.prompt for r in requests], [r.class_label for r in requests])


class CallStore:
    """Completed variation calls of one back end on disk: request digest -> PNG, written atomically."""

    def __init__(self, root: Path, identity: str) -> None:
        self.folder = Path(root) / "calls" / hashlib.sha256(identity.encode()).hexdigest()[:32]

    def get(self, request: VariationRequest) -> np.ndarray | None:
        path = self.folder / f"{request.digest()}.png"
        if not path.is_file():
            return None
        try:
            return decode_png(path.read_bytes())
        except (OSError, ValueError):
            return None  # a damaged entry is simply asked again

    def put(self, request: VariationRequest, image: np.ndarray) -> None:
        from cdi_audit.cache import atomic_write

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / f"{request.digest()}.png", encode_png(image))


class BlackBoxTarget:
    """A model seen only through ``vary``: what the feature stage needs of a target, and nothing more.

    It has the images (``encode`` is the identity: features compare pictures) and the conditions
    (captions or class ids travel with each request), but no noise predictions and no gradients.
    ``forward_rows`` counts the calls actually made (stored calls are free), as model calls are
    counted for other targets.
    """

    access: ClassVar[Access] = "black"

    def __init__(self, backend: VariationBackend, info: EndpointInfo, description: ModelInfo,
                 store: CallStore | None = None) -> None:
        self.backend = backend
        self.info = info
        self.description = description
        self.store = store
        self.conditioning: Conditioning = info.conditioning
        self.device = torch.device("cpu")
        self.forward_rows = 0
        self.calls_from_store = 0
        self.notes: list[str] = []  # warnings for the report about the model (a local one's, through ``vary``)
        self.on_calls_done: Callable[[int, int], None] | None = None

    @property
    def sample_size(self) -> int:
        return self.info.sample_size

    @property
    def has_decoder(self) -> bool:
        """Whether the model behind the endpoint works through an autoencoder (its decoder stays there)."""
        return self.info.family == "latent"

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def encode_condition(self, records: list) -> Condition | None:
        if self.conditioning != "class":
            return None
        return Condition({"class_labels": torch.tensor([-1 if r.label is None else r.label for r in records],
                                                       dtype=torch.long)})

    @contextlib.contextmanager
    def precision(self, full: bool) -> Iterator[None]:
        yield  # precision is the endpoint's business

    def vary_many(self, requests: list[VariationRequest]) -> list[np.ndarray]:
        """Answers, from the store where a call was already made, else from the back end (storing
        each answer as soon as it arrives)."""
        results: list[np.ndarray | None] = [None] * len(requests)
        if self.store is not None:
            for index, request in enumerate(requests):
                results[index] = self.store.get(request)
        missing = [i for i, result in enumerate(results) if result is None]
        self.calls_from_store += len(requests) - len(missing)
        done = 0

        def keep(position: int, image: np.ndarray) -> None:
            nonlocal done
            index = missing[position]
            results[index] = image
            if self.store is not None:
                self.store.put(requests[index], image)
            self.forward_rows += 1
            done += 1
            if self.on_calls_done is not None:
                self.on_calls_done(done, len(missing))

        if missing:
            self.backend.vary_many([requests[i] for i in missing], keep)
        return results  # type: ignore[return-value]


def local_black_box(target: Target) -> BlackBoxTarget:
    """A local model used only through ``vary`` (``--access blackbox``): what an endpoint serving it gives."""
    backend = LocalVariation(target)
    description = target.description.model_copy(update={"access": "black"})
    black_box = BlackBoxTarget(backend, backend.info, description)
    black_box.notes = target.notes
    return black_box
