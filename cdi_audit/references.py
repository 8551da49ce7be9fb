"""The papers the tool builds on, each worded once: the framework, the statistics and every feature's method.

Torch-free, so the feature catalogue and the reports (which run without a model) share one bibliography.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """A paper: ``key`` links a citation in the text to its entry in the reference list."""

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
