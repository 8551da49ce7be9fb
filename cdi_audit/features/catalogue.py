"""Every feature extractor in one table: its name, where it is implemented, what it needs and costs, its columns,
what it measures and the papers it comes from; and the presets users choose from.

Torch-free on purpose: the registry imports implementations from it, while ``--help``, the report's Method
section (``cdi-audit report`` runs without a model), the docs' feature table and the tests read it as it is.
Adding an extractor is its module plus one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdi_audit.access import ACCESS_LEVELS, Access, within
from cdi_audit.references import CDI, CLID, LOSS, NEIGHBOURHOOD, PIA, REDIFFUSE, SECMI, STRUCTURAL, Reference


@dataclass(frozen=True)
class ExtractorEntry:
    """One extractor as users, reports and tests see it.

    ``columns``: how many columns its default configuration gives (``columns_note`` says when a model changes
    that). ``noise_predictions``: requests per image of its default configuration, for extractors made of noise
    predictions alone (None when it needs gradients or image-to-image calls). ``first_prediction_at_zero``: its
    first request is the model at level 0 on the clean image, which the fused runner evaluates once for all
    extractors that ask for it. ``conditional``: it needs a conditional model; presets take it on one.
    """

    name: str
    implementation: str  # "module:Class"
    access: Access
    columns: int
    measures: str
    papers: tuple[Reference, ...]
    cost: str
    noise_predictions: int | None = None
    column_prefixes: tuple[str, ...] = ()
    columns_note: str = ""
    first_prediction_at_zero: bool = False
    conditional: bool = False

    @property
    def prefixes(self) -> tuple[str, ...]:
        """How its column names start (``pia_t200`` and ``pian_t200`` both come from ``pia``)."""
        return self.column_prefixes or (self.name,)


CATALOGUE: dict[str, ExtractorEntry] = {entry.name: entry for entry in (
    ExtractorEntry("loss", "cdi_audit.features.loss:DenoisingLoss", "grey", 1,
                   "the denoising error at t = 100, over 5 draws; members are denoised better", (LOSS, CDI),
                   "5 noise predictions per image", noise_predictions=5),
    ExtractorEntry("multi_loss", "cdi_audit.features.multi_loss:MultiTimestepLoss", "grey", 10,
                   "the denoising error at t = 0, 100, ..., 900, one draw", (LOSS, CDI),
                   "10 noise predictions per image", noise_predictions=10),
    ExtractorEntry("secmi", "cdi_audit.features.secmi:SecMI", "grey", 1,
                   "how far a DDIM step away and back lands from where it started (SecMI)", (SECMI,),
                   "12 noise predictions per image", noise_predictions=12, first_prediction_at_zero=True),
    ExtractorEntry("pia", "cdi_audit.features.pia:PIA", "grey", 2,
                   "the error when the model's own prediction at t = 0 is used as the noise (PIA, and PIAN with "
                   "that noise normalised)", (PIA,),
                   "3 noise predictions per image", noise_predictions=3, column_prefixes=("pia", "pian"),
                   first_prediction_at_zero=True),
    ExtractorEntry("neighbour_loss", "cdi_audit.features.neighbour_loss:NeighbourLoss", "grey", 4,
                   "the loss minus that of the image mirrored, and of the image shifted by a few pixels, with the "
                   "same noise, at t = 50 and 100, over 4 draws", (LOSS, NEIGHBOURHOOD),
                   "24 noise predictions per image (and 2 encodings on a latent model)", noise_predictions=24,
                   column_prefixes=("neighbour",)),
    ExtractorEntry("gradient_masking", "cdi_audit.features.gradient_masking:GradientMasking", "white", 10,
                   "the error on the 20% of entries where the loss's gradient is largest, at t = 0 to 900", (CDI,),
                   "20 forward and 10 backward passes per image"),
    ExtractorEntry("noise_optim", "cdi_audit.features.noise_optim:NoiseOptimisation", "white", 3,
                   "the correction to the noisy image that best explains the noise: its loss, its size, and the "
                   "gradient it starts from", (CDI,),
                   "about 6-15 forward and backward passes per image"),
    ExtractorEntry("clid", "cdi_audit.features.clid:CLiD", "grey", 5,
                   "how much the caption or class lowers the error (CLiD)", (CLID,),
                   "15 noise predictions per image (6 for classes)", columns_note="2 for classes",
                   conditional=True),
    ExtractorEntry("structural", "cdi_audit.features.structural:Structural", "grey", 2,
                   "SSIM of the image to what the model makes of it after a short DDIM inversion", (STRUCTURAL,),
                   "4 noise predictions and 2 decodes (latent) or 6 noise predictions (pixel) per image",
                   conditional=True),
    ExtractorEntry("rediffuse", "cdi_audit.features.rediffuse:ReDiffuse", "black", 3,
                   "distance of image-to-image variations to the image (ReDiffuse)", (REDIFFUSE,),
                   "10 image-to-image calls per image (3 on latent models)"),
)}
# ``pian`` is computed with ``pia`` (they share its first noise prediction): the name selects ``pia``.
ALIASES = {"pian": "pia"}
PRESETS: dict[str, tuple[str, ...]] = {
    # grey-box, no gradients: neighbour_loss is most of the power on a model that memorises little (on the
    # weak-signal benchmark fast needs 20 images per set for median p < 0.01, 100 without it).
    "fast": ("loss", "multi_loss", "secmi", "pia", "neighbour_loss"),
    # white-box, needs gradients
    "full": ("loss", "multi_loss", "secmi", "pia", "neighbour_loss", "gradient_masking", "noise_optim"),
    # black-box, an image-to-image endpoint is enough
    "blackbox": ("rediffuse",),
}
# Presets on conditional models (text-to-image, class-conditional) also take these.
CONDITIONAL_PRESET_EXTRAS = tuple(name for name, entry in CATALOGUE.items() if entry.conditional)


def preset_members(preset: str, conditional: bool = False) -> tuple[str, ...]:
    """The extractors of ``preset``; on a conditional model the grey- and white-box presets add the conditional
    extractors."""
    members = PRESETS[preset]
    if conditional and preset_access(preset) != "black":
        members = (*members, *CONDITIONAL_PRESET_EXTRAS)
    return members


def preset_access(preset: str) -> Access:
    """The access the preset needs: that of its most demanding extractor."""
    return max((CATALOGUE[name].access for name in PRESETS[preset]), key=ACCESS_LEVELS.index)


def column_count(names: tuple[str, ...] | list[str]) -> int:
    """Columns of these extractors in their default configuration."""
    return sum(CATALOGUE[name].columns for name in names)


def noise_predictions(names: tuple[str, ...] | list[str]) -> int | None:
    """Noise predictions per image the fused runner evaluates for these extractors: their requests, with the
    request they share at level 0 counted once; None when one of them is not made of noise predictions."""
    entries = [CATALOGUE[name] for name in names]
    if any(entry.noise_predictions is None for entry in entries):
        return None
    shared = sum(entry.first_prediction_at_zero for entry in entries)
    return sum(entry.noise_predictions for entry in entries) - max(0, shared - 1)


def largest_preset_within(available: Access) -> str | None:
    """The preset with the most extractors that a model giving ``available`` access serves."""
    fitting = [name for name in PRESETS if within(preset_access(name), available)]
    return max(fitting, key=lambda name: len(PRESETS[name]), default=None)


def extractor_of(column: str) -> str | None:
    """The extractor a feature column comes from (the longest matching prefix: ``pian_t200`` is ``pia``'s)."""
    matches = [(len(prefix), name) for name, entry in CATALOGUE.items() for prefix in entry.prefixes
               if column == prefix or column.startswith(prefix + "_")]
    return max(matches, default=(0, None))[1]


def extractors_used(columns: list[str]) -> list[str]:
    """Extractor names of ``columns``, in the order they first appear."""
    names = [extractor_of(column) for column in columns]
    return list(dict.fromkeys(name for name in names if name is not None))


def features_help() -> str:
    """The ``--features`` help: what ``auto`` means and what each preset holds, costs and needs."""
    parts = ["Feature preset or a comma-separated list of extractor names. 'auto' is 'fast' for a model at hand and "
             "'blackbox' for an endpoint."]
    for preset, members in PRESETS.items():
        counted = [name for name in members if CATALOGUE[name].noise_predictions is not None]
        costs = [f"{noise_predictions(counted)} noise predictions per image"] if counted else []
        costs += [f"{name}: {CATALOGUE[name].cost}" for name in members if name not in counted]
        parts.append(f"'{preset}' ({preset_access(preset)}-box: {', '.join(members)}; "
                     f"{column_count(members)} columns; {'; '.join(costs)}).")
    extras = " and ".join(CONDITIONAL_PRESET_EXTRAS)
    parts.append(f"Conditional models add {extras} to 'fast' and 'full'. Extractors: {', '.join(CATALOGUE)}.")
    return " ".join(parts)
