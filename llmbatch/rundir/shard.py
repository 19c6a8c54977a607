"""``--shard I/N``: the part of a prompt file whose ids hash into shard I of N.

Cron on several machines without a cluster: every machine runs the same command with
its own ``--shard I/N`` and writes its own run directory; ``llmbatch merge`` joins the
finished shards (merge.py). Which shard an id belongs to must be the same on every
machine and in every Python process, so it is an unkeyed BLAKE2b of the id's UTF-8
bytes, never ``hash()`` (salted per process).

The whole file is still read by every shard: duplicate ids and automatic ids
(``auto-<hash>-2``) depend on the lines before, so a shard filters after the reader.
A bad line belongs to the shard of its error record's id (``#line-N``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from llmbatch.errors import ConfigError, InputError
from llmbatch.records import PromptRecord
from llmbatch.rundir.reader import error_record_id

__all__ = ["Shard", "item_id", "parse_shard", "select_shard", "shard_of"]

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")
MAX_SHARDS = 1 << 20


def shard_of(record_id: str, count: int) -> int:
    """The shard (0 .. count-1) of ``record_id``: the same on every machine and run."""
    digest = hashlib.blake2b(record_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based, as given on the command line)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"--shard: N must be between 1 and {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"--shard: I must be between 0 and {self.count - 1} for N={self.count}, "
                f"got {self.index}"
            )

    def __contains__(self, record_id: object) -> bool:
        return isinstance(record_id, str) and shard_of(record_id, self.count) == self.index

    @property
    def spec(self) -> str:
        """``I/N``, as written in run.json and on the command line."""
        return f"{self.index}/{self.count}"

    @property
    def suffix(self) -> str:
        """The default run directory's suffix: ``shard0of3``."""
        return f"shard{self.index}of{self.count}"


def parse_shard(spec: str) -> Shard:
    """``"I/N"`` → Shard; ConfigError naming ``--shard`` otherwise."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise ConfigError(f"--shard: expected I/N such as 0/3, got {spec!r}")
    return Shard(int(m.group(1)), int(m.group(2)))


def item_id(item: PromptRecord | InputError) -> str:
    """The record id an input item ends up under (a bad line's is ``#line-N``)."""
    if isinstance(item, InputError):
        return error_record_id(item.line_no or 0)
    return item.id


def select_shard(
    items: Iterable[PromptRecord | InputError], shard: Shard
) -> Iterator[PromptRecord | InputError]:
    """The items of ``shard``, lazily and in input order."""
    index, count = shard.index, shard.count
    for item in items:
        if shard_of(item_id(item), count) == index:
            yield item
