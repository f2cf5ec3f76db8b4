"""`--shard K/N`: every id in exactly one shard, the same in every process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from curate.errors import InvalidArgument
from curate.shard import Shard


def test_shards_partition_ids_stably():
    ids = [f"{i:032x}" for i in range(3000)]
    shards = [Shard(k, 4) for k in range(4)]
    owners = [[k for k, shard in enumerate(shards) if i in shard] for i in ids]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(o == [k] for o in owners) for k in range(4)]
    assert min(sizes) > 650  # roughly even
    script = "from curate.shard import Shard; print(sum(f'{i:032x}' in Shard(1, 4) for i in range(3000)))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(other.stdout) == sizes[1]  # no per-process hash salt


@pytest.mark.parametrize("text", ["1", "a/b", "2/2", "-1/3", "0/0"])
def test_bad_shards(text):
    with pytest.raises(InvalidArgument, match="--shard"):
        Shard.parse(text)


def test_parse():
    assert Shard.parse(None) == Shard() and Shard.parse("2/5") == Shard(2, 5) and str(Shard(2, 5)) == "2/5"
