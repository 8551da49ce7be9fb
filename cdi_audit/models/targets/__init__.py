"""The Targets of the model families that need their own: how each family's network is conditioned and run.

They import torch; the families (``models/families/``) do not, and import their Target only when they build
one, so the registry can answer the command line's help without loading torch.
"""
