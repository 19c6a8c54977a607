"""Token usage, as the provider reported it, from an answer body of any shape.

Providers count the same things under different names and with different nesting, and
disagree on what includes what; every shape is normalised to :class:`TokenUsage`, whose
``input`` and ``output`` are totals with the cached and reasoning parts inside them:

- OpenAI chat and completions: ``prompt_tokens`` includes ``prompt_tokens_details.
  cached_tokens``; ``completion_tokens`` includes ``completion_tokens_details.
  reasoning_tokens`` (DeepSeek adds ``prompt_cache_hit_tokens``; OpenRouter
  ``prompt_tokens_details.cache_write_tokens``). Some servers (xAI) leave reasoning out
  of ``completion_tokens``: then ``total_tokens`` = prompt + completion + reasoning.
- Anthropic Messages: ``input_tokens`` excludes ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``; ``output_tokens`` includes thinking.
- OpenAI Responses: ``input_tokens`` includes ``input_tokens_details.cached_tokens``;
  ``output_tokens`` includes ``output_tokens_details.reasoning_tokens``.
- Gemini (``usageMetadata``): ``candidatesTokenCount`` excludes ``thoughtsTokenCount``;
  ``toolUsePromptTokenCount`` is input too; ``cachedContentTokenCount`` is cached input.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["TokenUsage", "usage_from_body"]


class TokenUsage(NamedTuple):
    """Tokens of one answer: totals, and the parts of them priced differently."""

    input: int  # every input token, cached ones included
    output: int  # every output token, reasoning included
    cached_input: int = 0  # of ``input``: read from a prompt cache
    cache_write: int = 0  # of ``input``: written to a prompt cache
    reasoning: int = 0  # of ``output``: reasoning / thinking


def _n(obj: Any, key: str) -> int:
    """A positive int field of ``obj`` (a dict, or anything else: 0)."""
    if type(obj) is not dict:
        return 0
    v = obj.get(key)
    return v if type(v) is int and v > 0 else 0  # type(): not bool


def usage_from_body(body: Any) -> TokenUsage | None:
    """The usage an assembled answer body carries; None when it carries none."""
    if not isinstance(body, dict):
        return None
    u = body.get("usage")
    if isinstance(u, dict):
        if "prompt_tokens" in u or "completion_tokens" in u:
            return _openai_chat(u)
        if "input_tokens" in u or "output_tokens" in u:
            if body.get("object") == "response" or "input_tokens_details" in u:
                return _responses(u)
            return _anthropic(u)
        return None
    meta = body.get("usageMetadata")
    if isinstance(meta, dict):
        return _gemini(meta)
    return None


def _openai_chat(u: dict[str, Any]) -> TokenUsage:
    prompt, completion = _n(u, "prompt_tokens"), _n(u, "completion_tokens")
    pd, cd = u.get("prompt_tokens_details"), u.get("completion_tokens_details")
    cached = max(_n(pd, "cached_tokens"), _n(u, "prompt_cache_hit_tokens"))
    reasoning = _n(cd, "reasoning_tokens")
    total = _n(u, "total_tokens")
    if reasoning and total and total == prompt + completion + reasoning:
        completion += reasoning  # reasoning reported beside the completion, not inside it
    return TokenUsage(
        input=prompt,
        output=completion,
        cached_input=min(cached, prompt),
        cache_write=min(_n(pd, "cache_write_tokens"), prompt - min(cached, prompt)),
        reasoning=min(reasoning, completion),
    )


def _anthropic(u: dict[str, Any]) -> TokenUsage:
    read, write = _n(u, "cache_read_input_tokens"), _n(u, "cache_creation_input_tokens")
    output = _n(u, "output_tokens")
    thinking = _n(u.get("output_tokens_details"), "thinking_tokens")
    return TokenUsage(
        input=_n(u, "input_tokens") + read + write,
        output=output,
        cached_input=read,
        cache_write=write,
        reasoning=min(thinking, output),
    )


def _responses(u: dict[str, Any]) -> TokenUsage:
    inp, out = _n(u, "input_tokens"), _n(u, "output_tokens")
    idet, odet = u.get("input_tokens_details"), u.get("output_tokens_details")
    cached = min(_n(idet, "cached_tokens"), inp)
    return TokenUsage(
        input=inp,
        output=out,
        cached_input=cached,
        cache_write=min(_n(idet, "cache_write_tokens"), inp - cached),
        reasoning=min(_n(odet, "reasoning_tokens"), out),
    )


def _gemini(m: dict[str, Any]) -> TokenUsage:
    inp = _n(m, "promptTokenCount") + _n(m, "toolUsePromptTokenCount")
    thoughts = _n(m, "thoughtsTokenCount")
    return TokenUsage(
        input=inp,
        output=_n(m, "candidatesTokenCount") + thoughts,
        cached_input=min(_n(m, "cachedContentTokenCount"), inp),
        reasoning=thoughts,
    )
