"""The papers a report cites: the framework, the statistics, and the method of each extractor it used.

Torch-free (``cdi-audit report`` runs without the model): the extractors' papers come from the catalogue.
"""

from __future__ import annotations

from cdi_audit.features.catalogue import CATALOGUE, extractors_used
from cdi_audit.references import CDI, DATASET_INFERENCE, PERMUTATION_P, SEQUENTIAL_P, Reference


def references_for(columns: list[str], test: str) -> list[Reference]:
    """The framework, the test's statistics, and the papers of the extractors behind ``columns``."""
    references = [CDI, DATASET_INFERENCE]
    if test == "permutation":
        references += [PERMUTATION_P, SEQUENTIAL_P]
    for name in extractors_used(columns):
        references += CATALOGUE[name].papers
    return list(dict.fromkeys(references))
