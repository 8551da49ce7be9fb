"""What a conditional model is conditioned on, as named tensors (docs/architecture.md, "Conditions").

Stable Diffusion 1.x/2.x take text states; SDXL takes text states, a pooled embedding and six
micro-conditioning ``time_ids``; DiT takes a class id. A ``Condition`` holds any such set, every tensor
with one row per image, so features can select, repeat and concatenate conditions along the batch without
knowing what is inside, and fused batching can tell which conditions fit one network call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Condition:
    """Named tensors of equal length along dimension 0 (one row per image)."""

    tensors: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        lengths = {len(value) for value in self.tensors.values()}
        if len(lengths) > 1:
            raise ValueError(f"condition tensors of unequal lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values()))) if self.tensors else 0

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def select(self, rows: slice | list[int] | torch.Tensor) -> Condition:
        """The rows ``rows`` (a slice, a list of positions or an index tensor) of every tensor."""
        if isinstance(rows, list):
            rows = torch.tensor(rows, dtype=torch.long)
        return Condition({name: value[rows.to(value.device) if isinstance(rows, torch.Tensor) else rows]
                          for name, value in self.tensors.items()})

    def repeat(self, times: int) -> Condition:
        """The whole batch ``times`` times over, as ``torch.cat([c] * times)`` (rows of z_t repeated so)."""
        return Condition({name: value.repeat(times, *([1] * (value.dim() - 1)))
                          for name, value in self.tensors.items()})

    def replaced(self, **tensors: torch.Tensor) -> Condition:
        """This condition with some tensors replaced (a weakened text, the same time ids)."""
        return Condition({**self.tensors, **tensors})

    @property
    def signature(self) -> tuple:
        """Names, row shapes and dtypes: conditions with equal signatures can share a network call."""
        return tuple((name, tuple(value.shape[1:]), value.dtype) for name, value in sorted(self.tensors.items()))

    @staticmethod
    def cat(conditions: Sequence[Condition]) -> Condition:
        """Rows of ``conditions`` one after another (they must have equal signatures)."""
        names = conditions[0].tensors.keys()
        return Condition({name: torch.cat([condition[name] for condition in conditions]) for name in names})


def select_condition(condition: Condition | None, rows) -> Condition | None:
    return None if condition is None else condition.select(rows)


def as_kwargs(condition: Condition | None) -> Mapping[str, torch.Tensor]:
    """The condition's tensors by name, or nothing for an unconditional model."""
    return {} if condition is None else condition.tensors


@dataclass(frozen=True)
class Tokens:
    """One tokenizer's ids for a batch of captions (B, L): BOS (CLIP's; T5 has none), the caption, EOS, then
    padding, with the ids of its end and padding tokens and where captions start (CLiD weakens captions token
    by token)."""

    ids: torch.Tensor
    eos_id: int
    pad_id: int
    start: int = 1  # the position of a caption's first token: 1 after CLIP's BOS, 0 for T5
