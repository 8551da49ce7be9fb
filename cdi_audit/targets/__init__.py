"""Model adapters: each family of diffusion model behind the one small ``Target`` interface."""

from cdi_audit.targets.base import Target

__all__ = ["Target"]
