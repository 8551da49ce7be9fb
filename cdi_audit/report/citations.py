"""The papers a report cites: the framework, the statistics, and each feature extractor it used.

Torch-free on purpose (``cdi-audit report`` runs without the model), so the extractors' names are
repeated here rather than read from ``cdi_audit.features``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    key: str
    text: str


CDI = Reference("cdi", "J. Dubiński, A. Kowalczuk, F. Boenisch, A. Dziedzic. CDI: Copyrighted Data Identification in "
                       "Diffusion Models. CVPR 2025.")
DATASET_INFERENCE = Reference("dataset-inference", "P. Maini, M. Yaghini, N. Papernot. Dataset Inference: Ownership "
                                                   "Resolution in Machine Learning. ICLR 2021.")
PERMUTATION_P = Reference("permutation-p", "B. Phipson, G. K. Smyth. Permutation P-values Should Never Be Zero. "
                                           "Statistical Applications in Genetics and Molecular Biology 9(1), 2010.")
SEQUENTIAL_P = Reference("sequential-p", "J. Besag, P. Clifford. Sequential Monte Carlo p-values. Biometrika 78(2), "
                                         "1991.")
LOSS = Reference("loss", "T. Matsumoto, T. Miura, N. Yanai. Membership Inference Attacks against Diffusion Models. "
                         "IEEE Security and Privacy Workshops 2023.")
SECMI = Reference("secmi", "J. Duan, F. Kong, S. Wang, X. Shi, K. Xu. Are Diffusion Models Vulnerable to Membership "
                           "Inference Attacks? ICML 2023.")
PIA = Reference("pia", "F. Kong, J. Duan, R. Ma, H. Shen, X. Zhu, X. Shi, K. Xu. An Efficient Membership Inference "
                       "Attack for the Diffusion Model by Proximal Initialization. ICLR 2024.")
CLID = Reference("clid", "S. Zhai et al. Membership Inference on Text-to-Image Diffusion Models via Conditional "
                         "Likelihood Discrepancy. NeurIPS 2024.")
STRUCTURAL = Reference("structural", "Q. Li et al. Unveiling Structural Memorization: Structural Membership Inference "
                                     "Attack for Text-to-Image Diffusion Models. ACM Multimedia 2024.")
NEIGHBOURHOOD = Reference("neighbourhood", "J. Mattern, F. Mireshghallah, Z. Jin, B. Schölkopf, M. Sachan, "
                                           "T. Berg-Kirkpatrick. Membership Inference Attacks against Language "
                                           "Models via Neighbourhood Comparison. Findings of ACL 2023.")
REDIFFUSE = Reference("rediffuse", "J. Li, J. Dong, T. He, J. Zhang. Towards Black-Box Membership Inference Attack "
                                   "for Diffusion Models. ICML 2025.")

# Extractor name -> (what it measures, in a few words; the papers it comes from).
EXTRACTORS: dict[str, tuple[str, tuple[Reference, ...]]] = {
    "loss": ("denoising loss at one timestep", (LOSS, CDI)),
    "multi_loss": ("denoising loss at ten timesteps", (LOSS, CDI)),
    "secmi": ("SecMI: error of a deterministic denoise-renoise step", (SECMI,)),
    "pia": ("PIA: proximal-initialisation error", (PIA,)),
    "pian": ("PIAN: PIA with normalised initial noise", (PIA,)),
    "gradient_masking": ("loss on the latent entries with the largest gradients", (CDI,)),
    "noise_optim": ("loss after optimising the input noise", (CDI,)),
    "clid": ("CLiD: conditional likelihood discrepancy", (CLID,)),
    "structural": ("structural similarity after inversion", (STRUCTURAL,)),
    "rediffuse": ("ReDiffuse: distance of averaged image-to-image variations", (REDIFFUSE,)),
    "neighbour_loss": ("denoising loss minus that of a mirrored and of a shifted copy, with the same noise",
                       (LOSS, NEIGHBOURHOOD)),
}
# Extractors whose columns are not named after them.
COLUMN_PREFIXES = {"neighbour_loss": "neighbour"}


def extractor_of(column: str) -> str | None:
    """The extractor a feature column comes from (longest name prefix: ``pian_t200`` is ``pian``)."""
    matches = [name for name in EXTRACTORS
               if column == (prefix := COLUMN_PREFIXES.get(name, name)) or column.startswith(prefix + "_")]
    return max(matches, key=len, default=None)


def extractors_used(columns: list[str]) -> list[str]:
    """Extractor names of ``columns``, in the order they first appear."""
    names = [extractor_of(column) for column in columns]
    return list(dict.fromkeys(name for name in names if name is not None))


def references_for(columns: list[str], test: str) -> list[Reference]:
    """The framework, the test's statistics, and the papers of the extractors behind ``columns``."""
    references = [CDI, DATASET_INFERENCE]
    if test == "permutation":
        references += [PERMUTATION_P, SEQUENTIAL_P]
    for name in extractors_used(columns):
        references += EXTRACTORS[name][1]
    return list(dict.fromkeys(references))
