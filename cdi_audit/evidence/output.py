"""What a search for near-copies leaves behind: evidence.json, a gallery picture, and a terminal summary.

The gallery puts each of the closest owner images beside the generation nearest to it, with the
similarity, so that anyone can judge with their own eyes whether the model reproduces the picture.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from cdi_audit.cache import atomic_write
from cdi_audit.console import shown
from cdi_audit.evidence.search import SearchResult
from cdi_audit.evidence.summary import EVIDENCE_FILE, GALLERY_FILE
from cdi_audit.inputs.images import open_image, to_model_pixels

GALLERY_ROWS = 12
GALLERY_TILE = 96


def result_json(result: SearchResult, alpha: float) -> dict:
    """The search as JSON: settings, counts, each owner image's nearest generation, the share comparison."""
    share = dataclasses.asdict(result.share) if result.share is not None else None
    if share is not None:
        share["alpha"] = alpha
        share["significant"] = result.share.p_value < alpha
    return {
        "kind": "cdi-audit extraction evidence (SIDE)",
        "model": result.model.model_dump(mode="json"),
        "settings": result.settings,
        "generations": {"pool": result.pool_size, "guided": result.guided_size, "clusters": result.clusters,
                        "cohesive_clusters": result.kept_clusters},
        "share_comparison": share,
        "images": [dataclasses.asdict(match) for match in result.matches],
        "model_calls": result.model_calls,
        "seconds": round(result.seconds, 3),
        "notes": result.notes,
    }


def _tile(pixels: np.ndarray) -> Image.Image:
    """(3, H, W) in [-1, 1] -> an enlarged RGB tile (nearest neighbour: keeps the pixels honest)."""
    array = ((np.transpose(pixels, (1, 2, 0)) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array).resize((GALLERY_TILE, GALLERY_TILE), Image.NEAREST)


def gallery(result: SearchResult, sample_size: int, rows: int = GALLERY_ROWS) -> Image.Image:
    """Owner image | nearest generation | similarity, for the suspect images closest to a generation."""
    closest = sorted(result.suspect_matches(), key=lambda m: -m.similarity)[:rows]
    width, label = 2 * GALLERY_TILE + 150, 150
    canvas = Image.new("RGB", (width, max(1, len(closest)) * (GALLERY_TILE + 6) + 24), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "your image | nearest generation | similarity", fill="black")
    for row, match in enumerate(closest):
        top = 24 + row * (GALLERY_TILE + 6)
        canvas.paste(_tile(to_model_pixels(open_image(Path(match.path)), sample_size)), (0, top))
        canvas.paste(_tile(result.generations[match.generation].numpy()), (GALLERY_TILE + 4, top))
        draw.text((2 * GALLERY_TILE + 12, top + GALLERY_TILE // 2 - 12),
                  f"{match.similarity:.3f}\n{Path(match.path).name}"[: label], fill="black")
    return canvas


def write_outputs(result: SearchResult, out: Path, alpha: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / EVIDENCE_FILE, out / GALLERY_FILE]
    atomic_write(written[0], json.dumps(result_json(result, alpha), indent=2).encode())
    gallery(result, result.model.sample_size).save(written[1])
    return written


def print_summary(result: SearchResult, alpha: float, console: Console) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("model", f"{shown(result.model.path)} ({result.model.family})")
    table.add_row("generations", f"{result.pool_size} in the pool, {result.guided_size} guided towards "
                                 f"{result.kept_clusters} of {result.clusters} clusters; {result.model_calls} model "
                                 f"calls, {result.seconds:.1f} s")
    suspect = np.array([m.similarity for m in result.suspect_matches()])
    if len(suspect):
        table.add_row("closest match", f"{suspect.max():.3f} (median {np.median(suspect):.3f} over "
                                       f"{len(suspect)} suspect images)")
    share = result.share
    if share is not None:
        table.add_row("near-copies", f"suspect {share.suspect_matched}/{share.suspect_total}, reference "
                                     f"{share.reference_matched}/{share.reference_total} at similarity >= "
                                     f"{share.threshold}")
        table.add_row("Fisher exact test", f"p = {share.p_value:.3g} (one-sided, suspect > reference; alpha "
                                           f"{alpha})")
    for note in result.notes:
        table.add_row("note", shown(note))
    console.print(table)
    if share is not None and share.p_value < alpha:
        console.print("[bold]NEAR-COPIES[/]  The model generates near-copies of the suspect images more often "
                      "than of the reference images.")
    else:
        console.print("[bold]NO SIGNIFICANT NEAR-COPIES[/]  This search found no more near-copies of the suspect "
                      "images than of the reference images; that does not show the images were not trained on.")
