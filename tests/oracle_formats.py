"""The corpus test's oracles for the Responses API and Gemini (tests/sdk_oracle.py has
OpenAI chat and Anthropic, and ``differences``).

- Responses: ``client.responses.stream(...).get_final_response()`` of the official
  openai SDK against the ReplayServer, dumped as for chat (``parsed`` fields dropped by
  ``differences``). Where the SDK refuses a stream whose item ids change between events
  (a ``RuntimeError`` from its accumulator: the GitHub Copilot gateway does this), the
  expected object is the terminal event's ``response`` as sent, which is what the SDK
  returns for every other stream.
- Gemini: the Google GenAI SDK has no public accumulator for streamed responses, so the
  oracle is read from the recording's raw events (fetched from the ReplayServer):
  ``gemini_events_view`` (compared by ``gemini_differences``) holds the answer text and the
  thought text (every part's text joined, by kind), the final ``usageMetadata`` and
  ``finishReason``, ``modelVersion`` and ``responseId``, and the function calls (names
  in order, and each whole ``args``). The merge rule itself is in docs/providers.md and
  tests/test_gemini.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson

from .replay import replay_prompt
from .sdk_oracle import SDKError

__all__ = ["FORMAT_ORACLES", "gemini_differences", "gemini_events_view", "openai_responses"]


async def openai_responses(origin: str, name: str) -> dict[str, Any] | SDKError:
    """The response ``responses.stream(...).get_final_response()`` gives for ``name``."""
    client = openai.AsyncOpenAI(base_url=f"{origin}/v1", api_key="replay", max_retries=0)
    try:
        async with client.responses.stream(model="replay", input=replay_prompt(name)) as stream:
            final = await stream.get_final_response()
    except openai.APIError as exc:
        return SDKError(exc.message)
    except RuntimeError:  # the SDK's accumulator refuses changing item ids
        return _terminal_response(await _events(origin, name))
    finally:
        await client.close()
    return final.model_dump(mode="json", exclude_unset=True, warnings=False)


def _terminal_response(events: list[dict[str, Any]]) -> dict[str, Any]:
    for event in reversed(events):
        if event.get("type") in ("response.completed", "response.incomplete"):
            return dict(event["response"])
    raise AssertionError("the recording has no terminal event")


async def gemini_events(origin: str, name: str) -> dict[str, Any] | SDKError:
    """``gemini_events_view`` of recording ``name``'s raw events."""
    return gemini_events_view(await _events(origin, name))


async def _events(origin: str, name: str) -> list[dict[str, Any]]:
    """The JSON data of every event of recording ``name``, as the ReplayServer sends it."""
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{origin}/raw", content=replay_prompt(name).encode())
    out = []
    for block in resp.content.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(
            line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")
        )
        if data:
            out.append(orjson.loads(data))
    return out


def gemini_events_view(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the merged response must hold, read from the raw events."""
    parts = [
        p
        for e in events
        for c in e.get("candidates") or []
        for p in (c.get("content") or {}).get("parts") or []
    ]
    last = events[-1]
    finish = [c.get("finishReason") for c in last.get("candidates") or []]
    return {
        **_texts(parts),
        "calls": [
            (p["functionCall"]["name"], p["functionCall"].get("args"))
            for p in parts
            if _named_call(p)
        ],
        "finishReason": finish,
        "usageMetadata": last.get("usageMetadata"),
        "modelVersion": last.get("modelVersion"),
        "responseId": last.get("responseId"),
    }


def gemini_differences(body: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Where llmbatch's merged body differs from the view of the raw events (a call whose
    arguments streamed as partialArgs is compared by name: the raw events never hold its
    args whole, tests/test_gemini.py checks the assembly)."""
    cands = body.get("candidates") or []
    parts = [p for c in cands for p in (c.get("content") or {}).get("parts") or []]
    calls = [
        (p["functionCall"]["name"], p["functionCall"].get("args")) for p in parts if _named_call(p)
    ]
    if len(calls) == len(expected["calls"]):
        calls = [
            (name, args if want is not None else None)
            for (name, args), (_, want) in zip(calls, expected["calls"], strict=True)
        ]
    ours = {
        **_texts(parts),
        "calls": calls,
        "finishReason": [c.get("finishReason") for c in cands],
        "usageMetadata": body.get("usageMetadata"),
        "modelVersion": body.get("modelVersion"),
        "responseId": body.get("responseId"),
    }
    return [f"{k}: {ours[k]!r} != {expected[k]!r}" for k in expected if ours[k] != expected[k]]


def _named_call(part: dict[str, Any]) -> bool:
    return isinstance(part.get("functionCall"), dict) and "name" in part["functionCall"]


def _texts(parts: list[dict[str, Any]]) -> dict[str, str]:
    def joined(thought: bool) -> str:
        return "".join(
            p["text"] for p in parts if "text" in p and bool(p.get("thought")) == thought
        )

    return {"text": joined(False), "thought": joined(True)}


FORMAT_ORACLES = {"responses": openai_responses, "gemini": gemini_events}
