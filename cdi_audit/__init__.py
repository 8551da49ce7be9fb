"""cdi-audit: test whether a diffusion model was trained on a set of images (CDI dataset inference)."""

__version__ = "0.1.0"
