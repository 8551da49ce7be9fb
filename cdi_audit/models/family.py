"""What a model family is: the pipelines it recognises, the components it loads, and the Target it builds.

``loading.py`` and the modules it calls do what every family shares (offline, safetensors only, refusals,
the fingerprint, the schedule); a family (one module in ``models/families/``) says only what is its own.
Registering a family is defining it with ``@register``: nothing outside its module (and its Target's, in
``models/targets/``) changes (``docs/architecture.md``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cdi_audit.errors import ModelUnavailable

if TYPE_CHECKING:  # the registry is read without torch (--help lists the families)
    import torch

    from cdi_audit.models.checkpoint_kind import CheckpointKind
    from cdi_audit.models.schedule import NoiseSchedule
    from cdi_audit.models.target import Target
    from cdi_audit.results.schema import ModelInfo

# The channels images are fed with (``inputs/images.py`` converts every mode to RGB).
RGB = 3
ComponentKind = Literal["diffusers", "text_encoder", "tokenizer"]
# What a component is to the audit: the network that denoises, the autoencoder, or something it conditions on.
ComponentRole = Literal["denoiser", "autoencoder", "condition"]


@dataclass(frozen=True)
class Component:
    """One sub-folder of a pipeline that a family loads, and the classes it accepts there."""

    folder: str
    classes: frozenset[str]
    kind: ComponentKind = "diffusers"
    role: ComponentRole = "condition"

    @property
    def config_file(self) -> str:
        return "tokenizer_config.json" if self.kind == "tokenizer" else "config.json"


@dataclass(frozen=True)
class PipelineIndex:
    """What ``model_index.json`` says: the pipeline's class and the class of each component present."""

    pipeline: str
    components: Mapping[str, str]

    def has(self, folder: str, class_name: str | None = None) -> bool:
        """Whether the pipeline has component ``folder`` (of class ``class_name``, when given)."""
        found = self.components.get(folder)
        return found is not None and (class_name is None or found == class_name)


@dataclass
class LoadedParts:
    """What loading hands a family to build its Target from."""

    parts: dict[str, Any]  # component folder -> module (weights read on first use) or tokenizer
    roles: dict[str, str]  # role -> component folder, for the denoiser and the autoencoder
    schedule: NoiseSchedule
    prediction_type: str
    device: torch.device
    description: ModelInfo
    pipeline_config: Mapping[str, Any] = field(default_factory=dict)  # model_index.json's other entries
    warnings: list[str] = field(default_factory=list)  # for the report: what the family noticed
    guidance: float | None = None  # the guidance value a guidance-distilled denoiser takes (Flux-dev), else None
    configs: Path | None = None  # the folder whose component configs were read (None: the model path)

    @property
    def denoiser(self) -> Any:
        return self.parts[self.roles["denoiser"]]

    def config_file(self, folder: str, name: str = "config.json") -> Path:
        """The config file of the component in ``folder``, named in a refusal."""
        return Path(self.configs or self.description.path) / folder / name

    @property
    def autoencoder(self) -> Any:
        return self.parts[self.roles["autoencoder"]]


class Family(abc.ABC):
    """A model family: subclasses set the class attributes and implement ``recognises``, ``components`` and
    ``build``. Every list of families the user reads (--help, refusals) is built from these attributes."""

    name: ClassVar[str]  # short id, e.g. "sdxl"
    label: ClassVar[str]  # the report's words for it, e.g. "text-to-image SDXL"
    display_name: ClassVar[str]  # how lists of families name it, e.g. "SDXL"
    # The pipeline it recognises, as the message saying which folders are supported names it, e.g. "a
    # StableDiffusionXLPipeline".
    pipeline_words: ClassVar[str]
    published: ClassVar[str]  # when its architecture was published (year-month): lists read oldest first
    # The diffusers pipeline whose ``from_single_file`` reads this family's single-file checkpoints (None: only
    # pipeline folders are supported), and the kinds of file it recognises from their tensor names.
    single_file_pipeline: ClassVar[str | None] = None
    checkpoint_kinds: ClassVar[tuple[CheckpointKind, ...]] = ()
    single_file_options: ClassVar[Mapping[str, Any]] = {}  # more keyword arguments of its from_single_file
    # Components a single file of this family may leave out, each with the key prefixes under which a file holds
    # it. One the file lacks is read from the --model-config folder, which must then hold its weights (a Flux
    # transformer is published alone, the VAE and text encoders beside it). Components not named here must be
    # in the file.
    single_file_parts: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # The diffusers LoRA loader mixin that places adapters on this family's components (None: no adapters).
    lora_loader: ClassVar[str | None] = None
    # How adapters name the denoiser's layers, "UNet" or "transformer" (``adapters.base_guess``), and the key
    # prefixes (kohya's) or parts (diffusers') that only adapters for this family have.
    adapter_layout: ClassVar[str | None] = None
    adapter_prefixes: ClassVar[tuple[str, ...]] = ()
    adapter_parts: ClassVar[tuple[str, ...]] = ()
    # Whether its denoiser may take a guidance value (guidance-distilled transformers); ``guidance`` says which
    # value a given model is fed. A family that takes none refuses --guidance.
    takes_guidance: ClassVar[bool] = False
    # A flow-matching family's time input per unit of sigma (SD3: 1000, Flux: 1, its transformer scales it);
    # None for a family trained on a variance-preserving schedule (``models/schedule.py``).
    flow_time_scale: ClassVar[float | None] = None
    # How many latent positions one input position of the denoiser takes, channels side by side (Flux packs
    # 2 x 2 patches: 4); its in_channels must be that many times the autoencoder's latent_channels.
    packed_positions: ClassVar[int] = 1
    # The latent side to audit at when the denoiser's config records none (Flux's transformer takes any size;
    # its pipeline's default is 128, i.e. 1024 px). None: the config's sample_size is required.
    default_sample_size: ClassVar[int | None] = None

    @abc.abstractmethod
    def recognises(self, index: PipelineIndex) -> bool:
        """Whether a pipeline with this index belongs to the family."""

    @abc.abstractmethod
    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        """The components to load from a pipeline with this index: one denoiser, at most one autoencoder."""

    @abc.abstractmethod
    def build(self, loaded: LoadedParts) -> Target:
        """The Target of a loaded model of this family."""

    def guidance(self, denoiser_config: Mapping[str, Any], requested: float | None) -> float | None:
        """The guidance value the denoiser is fed (None: it takes none), given the user's (None: not given).
        Only families that ``takes_guidance`` override this; loading refuses a value for the others
        (``checks.refuse_guidance``)."""
        return None

    def check(self, loaded: LoadedParts) -> None:  # noqa: B027 (most families need no check of their own)
        """Refuse (``ModelUnavailable``) or warn (``loaded.warnings``) about what only this family knows."""

    def fed_side(self, loaded: LoadedParts) -> int:
        """The side of the square inputs (latents, or images) the denoiser is fed: its config's sample_size, the
        first of a (height, width) pair, or ``default_sample_size`` (loading has checked it is an integer)."""
        size = loaded.denoiser.config.get("sample_size", self.default_sample_size)
        return size[0] if isinstance(size, (list, tuple)) else size

    def check_side(self, loaded: LoadedParts, multiple: int, why: str) -> None:
        """Refuse a fed side that is not a multiple of ``multiple`` (``why``: what divides it): the network
        would fail on it half-way through the audit, in a reshape."""
        side = self.fed_side(loaded)
        if side % multiple:
            must = "even" if multiple == 2 else f"a multiple of {multiple}"
            config = loaded.config_file(loaded.roles["denoiser"])
            raise ModelUnavailable(f"{config}: sample_size gives the {self.label} denoiser inputs of side {side}; "
                                   f"{why}, so the side must be {must}: correct sample_size to the model's "
                                   "resolution.")


def config_integer(loaded: LoadedParts, folder: str, key: str, minimum: int = 1) -> int:
    """An integer the audit computes with, from the config of the component in ``folder``; anything else (a
    string, a null, too small) would fail only half-way through the audit, so it is refused naming the file."""
    config = loaded.parts[folder].config
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelUnavailable(f"{loaded.config_file(folder)}: {key} is {value!r}, not an integer of at least "
                               f"{minimum}; correct it to the value the weights were saved with.")
    return value
