"""What an audit report shows of a search for near-copies, read back from evidence.json and gallery.png
(torch-free: ``cdi-audit report`` renders it without the model)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

EVIDENCE_FILE = "evidence.json"
GALLERY_FILE = "gallery.png"


@dataclass(frozen=True)
class EvidenceSummary:
    model_fingerprint: str
    pool: int
    guided: int
    clusters: int
    cohesive_clusters: int
    suspect_total: int
    best_similarity: float | None
    threshold: float | None  # the rest is None without reference images
    suspect_matched: int | None
    reference_matched: int | None
    reference_total: int | None
    p_value: float | None
    alpha: float | None
    notes: tuple[str, ...]
    gallery: bytes | None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.alpha is not None and self.p_value < self.alpha


def read_evidence(folder: Path) -> EvidenceSummary | None:
    """The search saved in ``folder``, or None when there is none; ValueError when evidence.json is unreadable."""
    path = folder / EVIDENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        generations, share = data["generations"], data["share_comparison"] or {}
        suspect = [image["similarity"] for image in data["images"] if image["role"] == "suspect"]
        gallery = folder / GALLERY_FILE
        return EvidenceSummary(
            model_fingerprint=data["model"]["fingerprint"], pool=generations["pool"], guided=generations["guided"],
            clusters=generations["clusters"], cohesive_clusters=generations["cohesive_clusters"],
            suspect_total=len(suspect), best_similarity=max(suspect, default=None),
            threshold=share.get("threshold"), suspect_matched=share.get("suspect_matched"),
            reference_matched=share.get("reference_matched"), reference_total=share.get("reference_total"),
            p_value=share.get("p_value"), alpha=share.get("alpha"), notes=tuple(data.get("notes", ())),
            gallery=gallery.read_bytes() if gallery.is_file() else None,
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable cdi-audit evidence file ({type(error).__name__})") from error
