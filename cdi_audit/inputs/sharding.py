"""Deterministic shards of the images: ``--shard i/N`` takes the images whose sha256, read as a number, is
i - 1 modulo N. The split depends only on file contents, so every process, machine or re-run agrees on it
without talking to the others, and the shards together hold each image exactly once.

Started by ``accelerate launch`` or ``torchrun``, each process (rank) takes its own shard the same way: see
``detect_launch``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cdi_audit.inputs.images import ImageSet

SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based, as written on the command line
    count: int

    def holds(self, sha256: str) -> bool:
        return int(sha256, 16) % self.count == self.index - 1

    def select(self, images: ImageSet) -> ImageSet:
        return replace(images, records=[record for record in images.records if self.holds(record.sha256)])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


ALL = Shard(1, 1)


def parse_shard(text: str) -> Shard:
    """'2/4' -> Shard(2, 4); anything else is a ValueError with the accepted form."""
    match = SHARD_PATTERN.match(text)
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"a shard is written i/N with 1 <= i <= N, e.g. 1/4 (got {text!r}).")
    return Shard(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class Launch:
    """This process's place among the processes that ``accelerate launch`` or ``torchrun`` started."""

    rank: int  # 0-based, among all processes on all machines
    world_size: int
    local_rank: int  # 0-based, among the processes on this machine: the GPU this process uses
    local_world_size: int

    @property
    def shard(self) -> Shard:
        return Shard(self.rank + 1, self.world_size)

    def device(self, requested: str, cuda_available: bool) -> str:
        """'auto' (with a GPU) and a bare 'cuda' mean this rank's own GPU, so ranks on one machine never
        share one; an explicit 'cpu' or 'cuda:N', or 'auto' without a GPU, stays as chosen."""
        if requested == "cuda" or (requested == "auto" and cuda_available):
            return f"cuda:{self.local_rank}"
        return requested

    def cpu_threads(self, cpu_count: int | None) -> int:
        """Torch threads per process when the launcher set no OMP_NUM_THREADS: the cores shared out among
        this machine's processes, so that together they never ask for more threads than there are cores."""
        return max(1, (cpu_count or 1) // self.local_world_size)


def _environment_integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name, "").strip()
    if not value:
        if default is None:
            raise ValueError(f"{name} is not set although WORLD_SIZE is; start the processes with "
                             "accelerate launch or torchrun, or unset WORLD_SIZE.")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} in the environment is not a whole number.") from None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to, read from WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE (set
    by torchrun, and by accelerate launch through it), or None when not launched as several processes.

    Ranks only split the images by hash and write to a shared cache, so no process group is needed: the
    environment alone says which shard is ours. Without LOCAL_RANK / LOCAL_WORLD_SIZE all processes are
    taken to be on one machine. ValueError when the variables are inconsistent.
    """
    environ = os.environ if environ is None else environ
    world_size = _environment_integer(environ, "WORLD_SIZE", 1)
    if world_size <= 1:
        return None
    rank = _environment_integer(environ, "RANK")
    local_rank = _environment_integer(environ, "LOCAL_RANK", rank)
    local_world_size = _environment_integer(environ, "LOCAL_WORLD_SIZE", world_size)
    if not (0 <= rank < world_size and 0 <= local_rank < local_world_size <= world_size):
        raise ValueError(f"inconsistent launch environment: RANK={rank}, WORLD_SIZE={world_size}, "
                         f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world_size}.")
    return Launch(rank, world_size, local_rank, local_world_size)
