"""Extraction evidence (SIDE): search what the model generates for near-copies of the owner's images."""
