"""The mock's answers: a deterministic function of the request, so tests check every byte."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

__all__ = [
    "REASONING_TOKENS",
    "answer_length",
    "count_prompt_tokens",
    "expected_reasoning",
    "expected_text",
    "expected_tokens",
    "prompt_key",
]

REASONING_TOKENS = 8  # the reasoning a request that asks for it streams first

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
    "zulu amber basil cedar dune ember fern grove harbor iris jade kelp lotus maple "
    "nectar olive pearl quartz river sage thyme umber violet willow yarrow zephyr "
    "lumen prism orbit comet nova pulse quill rune spark tide vale wisp"
).split()


def prompt_key(messages: Any) -> bytes:
    return orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)


def answer_length(key: bytes, tokens: int, spread: int) -> int:
    """Tokens in the answer to the prompt ``key``: ``tokens`` plus up to ``spread`` more,
    chosen by the prompt (so a client cannot know it before the answer ends)."""
    if spread <= 0:
        return tokens
    digest = hashlib.blake2b(key, digest_size=4, person=b"length").digest()
    return tokens + int.from_bytes(digest, "big") % (spread + 1)


def expected_tokens(messages: Any, n_tokens: int) -> list[str]:
    """The tokens the mock streams for ``messages`` (each a word with a leading space)."""
    stream = hashlib.shake_256(prompt_key(messages)).digest(n_tokens)
    words = _WORDS
    return [" " + words[b % len(words)] for b in stream]


def expected_text(messages: Any, n_tokens: int) -> str:
    """The full answer text the mock produces for ``messages`` and ``n_tokens``."""
    return "".join(expected_tokens(messages, n_tokens))


def expected_reasoning(messages: Any, n_tokens: int = REASONING_TOKENS) -> list[str]:
    """The reasoning tokens streamed before the answer to ``messages`` (when asked for)."""
    return expected_tokens([{"role": "reasoning"}, *messages], n_tokens)


def count_prompt_tokens(messages: Any) -> int:
    n = 0
    if isinstance(messages, list):
        for m in messages:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                n += len(c.split()) + 1
    return max(n, 1)
