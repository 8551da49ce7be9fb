"""What a family's single-file checkpoints look like: the tensor names that tell a file's kind from its header,
and the configs each kind loads with (``Family.checkpoint_kinds``; read by ``models/single_file.py``)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

# ComfyUI's files hold the denoiser's tensors under this prefix; the original releases hold them bare.
DIFFUSION_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class CheckpointKind:
    """One kind of single-file checkpoint: how a file of it is recognised, named and configured."""

    name: str  # short id, e.g. "sd1"
    display_name: str  # the messages' words for it, e.g. "Stable Diffusion 1.x"
    keys: tuple[str, ...]  # tensors every file of this kind holds (all of them, under one of ``prefixes``)
    prefixes: tuple[str, ...] = ("",)
    # The last dimension of the first key's tensor, where only it tells this kind from another (SD 1.x's CLIP
    # text model is 768 wide); None: the keys alone tell.
    width: int | None = None
    config: str | None = None  # the shipped config a file of this kind loads with; None: --model-config must say
    # Without ``config``: the refusal's words after "FILE is a <display_name>", saying what --model-config to give.
    needs_config: str = ""
    # Architectures that share these keys but that this version cannot load, by a key only they hold (refused by
    # name rather than failing half-way through the conversion), and what this kind covers, said with them.
    relatives: Mapping[str, str] = field(default_factory=dict)
    covers: str = ""

    def held_in(self, keys: Collection[str], width_of: Callable[[str], int]) -> bool:
        """Whether a file holding tensors ``keys`` is of this kind (``width_of``: a tensor's last dimension)."""
        for prefix in self.prefixes:
            if all(prefix + key in keys for key in self.keys):
                return self.width is None or width_of(prefix + self.keys[0]) == self.width
        return False

    def relative_in(self, keys: Collection[str]) -> str | None:
        """The name of the unsupported relative a file holding ``keys`` is, or None."""
        for key, name in self.relatives.items():
            if any(prefix + key in keys for prefix in self.prefixes):
                return name
        return None


def config_folder_needed(pipeline: str, example: str) -> str:
    """``needs_config`` of a kind whose variants the weights do not tell, and whose files may leave components
    out (``Family.single_file_parts``; ``example``: which), read from the --model-config folder."""
    return ("single-file checkpoint, and no configs ship for it (its variants differ in ways the weights do not "
            f"all tell); give --model-config DIR, the {pipeline} folder of the same model as save_pretrained writes "
            "it (model_index.json, each component's config, the tokenizers). The file's own weights are used; the "
            f"components it does not hold ({example}) are read from DIR, which must then hold their weights.")
