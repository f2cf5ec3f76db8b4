"""`--shard K/N`: split a stage's samples over N independent runs by a stable hash of each id."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from curate.errors import InvalidArgument


@dataclass(frozen=True)
class Shard:
    """Run K of N (0-based K); every id belongs to exactly one shard, on any machine, in any run."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        """`"K/N"` with 0 ≤ K < N; None or empty means the whole set."""
        if not text:
            return cls()
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise InvalidArgument(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise InvalidArgument(f"--shard {text}: need 0 <= K < N")
        return cls(index, count)

    def __contains__(self, sample_id: str) -> bool:
        # crc32 rather than hash(): Python salts str hashes per process.
        return self.count == 1 or zlib.crc32(sample_id.encode()) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def held_out(key: str, fraction: float) -> bool:
    """Whether `key` falls in the held-out `fraction` (to 0.1%), the same on every machine and run."""
    return zlib.crc32(key.encode()) % 1000 < round(fraction * 1000)
