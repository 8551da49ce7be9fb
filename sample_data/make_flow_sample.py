"""Build ``sample_data/flow/``: a tiny SD3 and a tiny Flux model, each trained on ``published/``.

    python sample_data/make_flow_sample.py

- ``flow/sd3/``: a StableDiffusion3Pipeline saved without T5 (16 px, 4 x 8 x 8 latents, a two-layer
  transformer), trained 1,600 steps by rectified flow on the 64 images of ``published/``;
- ``flow/flux/``: a guidance-distilled FluxPipeline (packed latents, T5 and CLIP text encoders), trained 1,200
  steps on the same images with guidance 1.0.

Every image is captioned "a photograph" (audit with ``--caption "a photograph"``); neither model saw
``unpublished/`` or ``other/``. The text encoders and VAEs are random and frozen, as in the tests
(``tests/tiny_flow.py``, whose training recipe is diffusers': sigma logit-normal, target eps - z0). About
five minutes on two CPU cores. The README audits these folders.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
CAPTION = "a photograph"
STEPS = {"sd3": 1600, "flux": 1200}


def main() -> None:
    from tiny_flow import train_tiny_flux, train_tiny_sd3

    torch.set_num_threads(2)
    target = HERE / "flow"
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        members = Path(scratch) / "published"
        shutil.copytree(HERE / "published", members)
        for image in members.iterdir():
            image.with_suffix(".txt").write_text(CAPTION)
        train_tiny_sd3(members, target / "sd3", steps=STEPS["sd3"])
        train_tiny_flux(members, target / "flux", steps=STEPS["flux"])
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
