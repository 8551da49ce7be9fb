"""Deterministic shards of the images: ``--shard i/N`` takes the images whose sha256, read as a number, is
i - 1 modulo N. The split depends only on file contents, so every process, machine or re-run agrees on it
without talking to the others, and the shards together hold each image exactly once."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from cdi_audit.images import ImageSet

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
