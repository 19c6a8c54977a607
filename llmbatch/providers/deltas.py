"""Merging streamed JSON deltas into one object, for fields no assembler knows by name.

The rule is the one the official OpenAI SDK applies to chat deltas
(``openai.lib.streaming._deltas.accumulate_delta``), so a provider extension streamed
as text fragments (``reasoning_content`` once was one) comes out whole without a
release: strings are concatenated, numbers added, objects merged key by key, lists of
objects that carry an ``index`` merged entry by entry, other lists extended; ``index``
and ``type`` are replaced. Two departures, because providers stream what the SDK's
generic rule cannot hold:

- An identity field (``role``, ``id``, ``name``, ``type``, ``format``, ``channel``) that
  a provider repeats unchanged in every delta, or sends as ``""`` in continuations, is
  kept once; the SDK concatenates it ("assistantassistant...").
- A list of objects without ``index`` (OpenRouter's ``annotations``; Mistral's typed
  content parts) is appended to; the SDK raises. In ``PART_LISTS`` (typed parts that
  stream as continuations: Mistral's ``content`` and a thinking part's ``thinking``),
  a part continues the previous one when both have the same ``type``.

A string that grows is kept as its pieces while streaming (joining at every delta would
copy a long reasoning trace once per token); ``finish_text`` joins them, in place, once
the stream is read.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IDENTITY_KEYS", "PART_LISTS", "finish_text", "merge_delta", "merge_parts"]

IDENTITY_KEYS = frozenset({"role", "id", "name", "type", "format", "channel"})
PART_LISTS = frozenset({"content", "thinking"})
_REPLACED = frozenset({"index", "type"})


def merge_delta(acc: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """Merge ``delta`` into ``acc`` (changed in place, and returned).

    Values of ``delta`` are taken over, not copied: pass freshly decoded JSON.
    """
    for key, value in delta.items():
        old = acc.get(key)
        if old is None:
            if value.__class__ is list and _has_index(value):
                acc[key] = _merge_indexed([], value)
            else:
                acc[key] = value
            continue
        if key in _REPLACED:
            acc[key] = value
        elif old.__class__ is _Pieces and value.__class__ is str:
            old.append(value)
        elif old.__class__ is str and value.__class__ is str:
            if key in IDENTITY_KEYS and (not value or value == old):
                continue
            acc[key] = _Pieces((old, value))
        elif old.__class__ is dict and value.__class__ is dict:
            merge_delta(old, value)
        elif old.__class__ is list and value.__class__ is list:
            _merge_list(key, old, value)
        elif _is_number(old) and _is_number(value):
            acc[key] = old + value
        # Anything else (a null after a value, a string after a list): the value stays.
    return acc


class _Pieces(list[str]):
    """A string being streamed, kept as its pieces until ``finish_text``."""

    __slots__ = ()


def finish_text(obj: Any) -> Any:
    """``obj`` with every string kept as pieces joined (in place; returns ``obj``)."""
    if obj.__class__ is dict:
        for key, value in obj.items():
            if value.__class__ is _Pieces:
                obj[key] = "".join(value)
            elif value.__class__ is dict or value.__class__ is list:
                finish_text(value)
    elif obj.__class__ is list:
        for i, value in enumerate(obj):
            if value.__class__ is _Pieces:
                obj[i] = "".join(value)
            elif value.__class__ is dict or value.__class__ is list:
                finish_text(value)
    return obj


def merge_parts(parts: list[Any], new: list[Any]) -> list[Any]:
    """Append typed parts to ``parts``; a part continues the last when of the same type."""
    for part in new:
        last = parts[-1] if parts else None
        if (
            part.__class__ is dict
            and last.__class__ is dict
            and part.get("type") == last.get("type")
        ):
            merge_delta(last, {k: v for k, v in part.items() if k != "type"})
        else:
            parts.append(part)
    return parts


def _merge_list(key: str, old: list[Any], new: list[Any]) -> None:
    if _has_index(new) and not (old and all(_is_scalar(x) for x in old)):
        _merge_indexed(old, new)
    elif key in PART_LISTS and any(x.__class__ is dict for x in new):
        merge_parts(old, new)
    else:
        old.extend(new)


def _merge_indexed(old: list[Any], new: list[Any]) -> list[Any]:
    """Entries with an ``index`` merge into the entry at that position (inserted when
    there is none yet); entries without one are appended."""
    for entry in new:
        index = entry.get("index") if entry.__class__ is dict else None
        if index.__class__ is not int:
            old.append(entry)
        elif index < len(old) and old[index].__class__ is dict:
            merge_delta(old[index], entry)
        else:
            old.insert(index, entry)
    return old


def _has_index(items: list[Any]) -> bool:
    return any(x.__class__ is dict and "index" in x for x in items)


def _is_scalar(x: Any) -> bool:
    return isinstance(x, str | int | float)


def _is_number(x: Any) -> bool:
    return x.__class__ is int or x.__class__ is float  # not bool
