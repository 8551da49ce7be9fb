"""Model components whose weights are read from disk only when first used.

An audit whose features are all in the cache (``cdi-audit extract`` on other
machines, a re-run, a batch sharing features) needs the model's fingerprint
and configuration but never its weights: loading a large model would cost
minutes and gigabytes for nothing. A ``DeferredModule`` answers ``config``
from the component's config file at once and loads the module on the first
call or attribute access that needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only named in annotations: the single-file and refusal code imports this without torch
    import torch

# Calls that only prepare a module; before loading they are remembered and replayed on it.
PREPARING_CALLS = frozenset({"to", "eval", "requires_grad_"})


class DeferredModule:
    """Stands in for a ``torch.nn.Module`` until it is needed; then behaves as the module itself."""

    def __init__(self, class_name: str, config: Any, load: Callable[[], torch.nn.Module]) -> None:
        self.class_name = class_name
        self.config = config
        self._load = load
        self._module: torch.nn.Module | None = None
        self._pending: list[tuple[str, tuple, dict]] = []

    @property
    def loaded(self) -> bool:
        return self._module is not None

    @property
    def module(self) -> torch.nn.Module:
        """The loaded module (loaded now, once, with the remembered preparing calls applied)."""
        if self._module is None:
            module = self._load()
            for name, args, kwargs in self._pending:
                module = getattr(module, name)(*args, **kwargs)
            self._module, self._pending = module, []
        return self._module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        # Only reached for names this object does not have itself.
        if name.startswith("_"):
            raise AttributeError(name)
        if self._module is None and name in PREPARING_CALLS:
            def remember(*args, **kwargs) -> DeferredModule:
                self._pending.append((name, args, kwargs))
                return self
            return remember
        return getattr(self.module, name)


def module_class_name(module: torch.nn.Module | DeferredModule) -> str:
    """The component's class name, without loading a deferred one."""
    return module.class_name if isinstance(module, DeferredModule) else type(module).__name__


def loaded_modules(*modules: torch.nn.Module | DeferredModule | None) -> int:
    """How many of ``modules`` hold weights in memory (tests: a cached audit loads none)."""
    return sum(1 for m in modules if m is not None and (not isinstance(m, DeferredModule) or m.loaded))


def load_now(*modules: torch.nn.Module | DeferredModule | None) -> None:
    """Read the weights of any deferred ``modules`` now: a server should fail at start, not at its first request."""
    for module in modules:
        if isinstance(module, DeferredModule):
            module.module  # noqa: B018 (loads it)
