"""How prompts travel from the driver to the worker actors: one JSON blob per chunk."""

from __future__ import annotations

from typing import Any

import orjson

from llmbatch.errors import InputError
from llmbatch.records import PromptRecord

__all__ = ["BadLine", "Packed", "decode_item", "encode_item", "pack", "unpack"]


# Items travel as PromptRecords; a bad line as this tuple (exceptions with keyword-only
# arguments do not pickle), turned back into the InputError the batch records.
BadLine = tuple[str, str, str, int | None]


def encode_item(item: PromptRecord | InputError) -> PromptRecord | BadLine:
    if isinstance(item, InputError):
        return ("input_error", item.reason, item.path, item.line_no)
    return item


def decode_item(item: PromptRecord | BadLine) -> PromptRecord | InputError:
    if isinstance(item, PromptRecord):
        return item
    _, reason, path, line_no = item
    return InputError(reason, path=path, line_no=line_no)


# A chunk travels as one JSON blob: Ray then pickles one bytes object instead of each
# record (cloudpickle's per-object work was most of the driver's cost of sending).
# What JSON cannot hold (it came from a JSON line, so hardly anything) goes pickled.
Packed = bytes | list[PromptRecord | BadLine]


def pack(items: list[PromptRecord | InputError]) -> Packed:
    rows: list[list[Any]] = []
    for item in items:
        if isinstance(item, InputError):
            rows.append([1, item.reason, item.path, item.line_no])
        else:
            rows.append([0, item.id, item.line_no, item.shape, item.body, item.endpoint])
    try:
        return orjson.dumps(rows)
    except (TypeError, orjson.JSONEncodeError):
        return [encode_item(item) for item in items]


def unpack(packed: Packed) -> list[PromptRecord | BadLine]:
    if not isinstance(packed, bytes):
        return packed
    out: list[PromptRecord | BadLine] = []
    for row in orjson.loads(packed):
        if row[0] == 1:
            out.append(("input_error", row[1], row[2], row[3]))
        else:
            out.append(PromptRecord(row[1], row[2], row[3], row[4], row[5]))
    return out
