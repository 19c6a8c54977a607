"""A compact set of ids for duplicate detection and the resume index.

A Python ``set`` of strings costs ~90 bytes per id (the string and its slot), which is
~90 MB for a million prompts. This keeps only the 64-bit ``hash()`` of each id in a
flat open-addressing table: 16 bytes per id at most. Two different ids with the same
64-bit hash would be taken for one; at a million ids the odds are about 1 in 30 million.
``hash()`` of a str is salted per process, so the table never outlives the process.
"""

from __future__ import annotations

from array import array

__all__ = ["IdMap", "IdSet"]

_EMPTY = 0


class IdSet:
    """Membership of strings by their 64-bit hash; linear probing, load factor <= 1/2."""

    __slots__ = ("_table", "_mask", "_count")

    def __init__(self, capacity: int = 1024) -> None:
        size = 16
        while size < 2 * capacity:
            size *= 2
        self._table = array("q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0

    @staticmethod
    def _key(item: str) -> int:
        h = hash(item)
        return h if h != _EMPTY else 1

    def add(self, item: str) -> bool:
        """Add ``item``; True when it was not there yet."""
        h = self._key(item)
        table = self._table
        i = _slot(table, self._mask, h)
        if table[i] == h:
            return False
        table[i] = h
        self._count += 1
        if 2 * self._count > len(table):
            self._grow()
        return True

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        h = self._key(item)
        return self._table[_slot(self._table, self._mask, h)] == h

    def __len__(self) -> int:
        return self._count

    def _grow(self) -> None:
        old = self._table
        size = 2 * len(old)
        table = array("q", bytes(8 * size))
        mask = size - 1
        for h in old:
            if h != _EMPTY:
                table[_slot(table, mask, h)] = h
        self._table, self._mask = table, mask


class IdMap(IdSet):
    """An IdSet that keeps one 64-bit value per id (0: none), in a parallel flat table."""

    __slots__ = ("_values",)

    def __init__(self, capacity: int = 1024) -> None:
        super().__init__(capacity)
        self._values = array("q", bytes(8 * len(self._table)))

    def put(self, item: str, value: int) -> None:
        """Add ``item`` (if new) with ``value``, replacing the value it had."""
        self.add(item)
        self._values[_slot(self._table, self._mask, self._key(item))] = value

    def get(self, item: str) -> int:
        """The value of ``item``; 0 when it is absent or has none."""
        h = self._key(item)
        slot = _slot(self._table, self._mask, h)
        return self._values[slot] if self._table[slot] == h else 0

    def _grow(self) -> None:
        old_table, old_values = self._table, getattr(self, "_values", None)
        super()._grow()
        values = array("q", bytes(8 * len(self._table)))
        if old_values is not None:
            for h, v in zip(old_table, old_values, strict=True):
                if h != _EMPTY and v:
                    values[_slot(self._table, self._mask, h)] = v
        self._values = values


def _slot(table: array[int], mask: int, h: int) -> int:
    """Where ``h`` is in ``table``, or the empty slot where it would go (linear probing)."""
    i = h & mask
    while table[i] != _EMPTY and table[i] != h:
        i = (i + 1) & mask
    return i
