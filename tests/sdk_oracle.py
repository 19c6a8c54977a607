"""What the official SDKs assemble from a recorded stream: the corpus test's oracle.

Each oracle sends one request through the provider's official SDK (a dev dependency) to
a ReplayServer and returns what the SDK assembles from the same bytes llmbatch reads, as
plain JSON (``model_dump(mode="json", exclude_unset=True)``), or an ``SDKError`` when the
SDK raises the provider's error from inside the stream.

- OpenAI chat: the chunks of ``chat.completions.create(stream=True)`` fed to
  ``ChatCompletionStreamState`` (the accumulator behind ``chat.completions.stream``,
  whose docstring shows this use), read back with ``current_completion_snapshot``.
  ``.stream()`` itself is not used: it drops chunks whose ``object`` is not
  ``chat.completion.chunk`` (Perplexity ends with ``chat.completion.done``, carrying the
  finish reason) and parses content into SDK-only ``parsed`` fields.
- Anthropic: ``messages.stream(...).get_final_message()``.

Normalisation (``differences`` and ``_prepare``), each because the SDK's accumulator
is generic where providers are not:

1. ``parsed`` / ``parsed_arguments`` / ``parsed_output`` are SDK additions, not wire
   fields: dropped.
2. null and absent are the same: the SDKs' models fill every declared field with None
   (``audio``, ``function_call``, ``stop_details``, ...) whether or not it was sent.
   An empty string and null are still different.
3. OpenAI chat chunks are prepared before the SDK accumulates them, where its
   ``accumulate_delta`` (concatenate every string, merge lists by ``index``) cannot
   hold what providers send:
   a. an identity field repeated unchanged in every delta (``role`` from Perplexity,
      OpenRouter, Snowflake and Z.ai, OpenRouter's ``reasoning_details[].format``,
      Groq's ``channel``) is given once: the SDK would concatenate it
      ("assistantassistant...");
   b. lists of objects without ``index`` (Mistral's typed ``content`` parts and their
      ``thinking`` parts, OpenRouter's ``annotations``) get an ``index`` so the SDK
      can merge them, removed again afterwards (it raises otherwise): a content part
      continues the previous one when it has the same ``type``, any other list item is
      appended.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from .replay import replay_prompt

__all__ = [
    "ORACLES",
    "SDKError",
    "answer_and_reasoning",
    "anthropic_message",
    "differences",
    "openai_chat",
]

# Fields a provider repeats unchanged in every delta; concatenating them is wrong.
IDENTITY_KEYS = frozenset({"role", "format", "channel", "id", "name", "type"})
# Lists of typed parts that stream as continuations (Mistral content and thinking).
PART_LISTS = frozenset({"content", "thinking"})
SDK_ADDED = frozenset({"parsed", "parsed_arguments", "parsed_output"})
_ADDED_INDEX = "__oracle_index__"


@dataclass(frozen=True)
class SDKError:
    """The SDK raised the provider's error from inside the stream; ``message`` is the
    provider's own message from the error object the SDK read."""

    message: str


def _provider_message(body: object, fallback: str) -> str:
    """The message of the error object in an SDK exception's body (the ``error`` of an
    Anthropic error event, or the OpenAI error object itself)."""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
    return fallback


async def openai_chat(origin: str, name: str) -> dict[str, Any] | SDKError:
    """The chat.completion ChatCompletionStreamState assembles from recording ``name``."""
    client = openai.AsyncOpenAI(base_url=f"{origin}/v1", api_key="replay", max_retries=0)
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    prepare = _Preparer()
    try:
        with warnings.catch_warnings():
            # The SDK's models declare content a string; Mistral's list of parts is kept
            # as sent, and pydantic warns whenever the SDK dumps it.
            warnings.filterwarnings("ignore", "Pydantic serializer warnings", UserWarning)
            stream = await client.chat.completions.create(
                model="replay",
                messages=[{"role": "user", "content": replay_prompt(name)}],
                stream=True,
            )
            async for chunk in stream:
                state.handle_chunk(prepare(chunk))
    except openai.APIError as exc:
        return SDKError(_provider_message(exc.body, exc.message))
    finally:
        await client.close()
    dumped = state.current_completion_snapshot.model_dump(
        mode="json", exclude_unset=True, warnings=False
    )
    return _strip_added_index(dumped)


async def anthropic_message(origin: str, name: str) -> dict[str, Any] | SDKError:
    """The message ``MessageStream.get_final_message()`` assembles from recording ``name``."""
    client = anthropic.AsyncAnthropic(base_url=origin, api_key="replay", max_retries=0)
    try:
        async with client.messages.stream(
            model="replay",
            max_tokens=16,
            messages=[{"role": "user", "content": replay_prompt(name)}],
        ) as stream:
            message = await stream.get_final_message()
    except anthropic.APIError as exc:
        return SDKError(_provider_message(exc.body, exc.message))
    finally:
        await client.close()
    return message.model_dump(mode="json", exclude_unset=True, warnings=False)


ORACLES = {"openai": openai_chat, "anthropic": anthropic_message}


def answer_and_reasoning(kind: str, obj: dict[str, Any]) -> tuple[str, str | None]:
    """(answer text, reasoning text or None) of an SDK object: what a user expects in
    the text file and beside it."""
    answer: list[str] = []
    thought: list[str] = []
    if kind == "anthropic":
        for block in obj.get("content") or []:
            if block.get("type") == "text":
                answer.append(block.get("text") or "")
            elif block.get("type") == "thinking":
                thought.append(block.get("thinking") or "")
    else:
        message = obj["choices"][0]["message"] if obj.get("choices") else {}
        content = message.get("content")
        if isinstance(content, str):
            answer.append(content)
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "text":
                answer.append(part["text"])
            elif part.get("type") == "thinking":
                thought += [p["text"] for p in part["thinking"] if p.get("type") == "text"]
        thought.append(message.get("reasoning_content") or message.get("reasoning") or "")
    return "".join(answer), "".join(thought) or None


def differences(ours: Any, sdk: Any, path: str = "") -> list[str]:
    """Where ``ours`` differs from the SDK's object (empty when they agree), with null
    and absent the same and SDK-added keys ignored."""
    if isinstance(ours, dict) and isinstance(sdk, dict):
        out: list[str] = []
        for key in sorted(set(ours) | set(sdk)):
            if key in SDK_ADDED:
                continue
            a, b = ours.get(key), sdk.get(key)
            out += differences(a, b, f"{path}.{key}")
        return out
    if isinstance(ours, list) and isinstance(sdk, list):
        if len(ours) != len(sdk):
            return [f"{path}: {len(ours)} items, the SDK has {len(sdk)}"]
        out = []
        for i, (a, b) in enumerate(zip(ours, sdk, strict=True)):
            out += differences(a, b, f"{path}[{i}]")
        return out
    if ours == sdk and type(ours) is type(sdk):
        return []
    if isinstance(ours, int | float) and isinstance(sdk, int | float) and ours == sdk:
        return []
    return [f"{path or '.'}: {_short(ours)} != SDK {_short(sdk)}"]


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 160 else text[:157] + "..."


class _Preparer:
    """Rewrites OpenAI chat chunks where the SDK's generic accumulator cannot hold them
    (module docstring, point 3). Keeps what it has seen per choice."""

    def __init__(self) -> None:
        self.seen: dict[int, dict[str, Any]] = {}

    def __call__(self, chunk: ChatCompletionChunk) -> ChatCompletionChunk:
        data = chunk.to_dict()
        changed = False
        for choice in data.get("choices") or []:
            delta = choice.get("delta")
            if isinstance(delta, dict):
                acc = self.seen.setdefault(choice.get("index", 0), {})
                changed = _prepare(delta, acc) or changed
        return ChatCompletionChunk.construct(**data) if changed else chunk


def _prepare(delta: dict[str, Any], acc: dict[str, Any]) -> bool:
    """Prepare ``delta`` against ``acc`` (what was accumulated so far at this level,
    updated here); True when ``delta`` was changed."""
    changed = False
    for key in list(delta):
        value = delta[key]
        if key in IDENTITY_KEYS and isinstance(value, str):
            if value and acc.get(key) == value:
                del delta[key]
                changed = True
            elif value:
                acc[key] = value
            continue
        if isinstance(value, dict):
            changed = _prepare(value, acc.setdefault(key, {})) or changed
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items: list[dict[str, Any]] = acc.setdefault(key, [])
            if not isinstance(items, list):
                continue
            indexed = all("index" in v for v in value)
            for item in value:
                if indexed:
                    i = item["index"]
                else:
                    last = items[-1] if items else None
                    same = key in PART_LISTS and last is not None
                    same = same and last.get("type") == item.get("type")  # type: ignore[union-attr]
                    i = len(items) - 1 if same else len(items)
                    item["index"] = i
                    item[_ADDED_INDEX] = True
                    changed = True
                while len(items) <= i:
                    items.append({})
                changed = _prepare(item, items[i]) or changed
    return changed


def _strip_added_index(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.pop(_ADDED_INDEX, None):
            obj.pop("index", None)
        for v in obj.values():
            _strip_added_index(v)
    elif isinstance(obj, list):
        for v in obj:
            _strip_added_index(v)
    return obj
