"""A built-in mock server (aiohttp.web) for tests, demos and benchmarks: OpenAI chat and
completions, Anthropic Messages, the Responses API and Gemini.

The answer is a deterministic function of the request (``expected_text``), so every
output byte can be checked. Streaming timing, measured from ``t0`` = the moment the
handler starts (request headers parsed, before the body is read):

- the role chunk (``{"role": "assistant", "content": ""}``, no text) is written at once;
- content token i (0-based, one per SSE event and one write) is due at
  ``t0 + ttft_s + i * itl_s``: the first content token ``ttft_s`` after the request
  arrived, then one every ``itl_s``;
- the finish chunk, the usage chunk and ``[DONE]`` follow the last token in one write.

The schedule is absolute, so timer lateness does not accumulate; each token can be late
by the event loop's timer granularity (asyncio on epoll rounds up to whole milliseconds)
and by any time the loop is busy. With ``itl_s = 0`` the tokens go in one write.

Per-request overrides come as headers: ``x-mock-tokens``, ``x-mock-ttft-ms``,
``x-mock-itl-ms``, ``x-mock-fault`` (a fault kind, on every attempt) and
``x-mock-fault-attempts`` (how many attempts of the same prompt the fault hits).
Configured fault *rates* pick prompts by a hash of their content and hit only their
first ``fault_attempts`` attempts, so a retrying client always gets through.

Modules: ``config`` (MockConfig), ``state`` (counters, plans; front-end independent),
``faults`` (fault choice), ``ratelimits`` (admission and rate-limit headers), ``answers``
(the text), ``wire`` (body shapes), ``streaming``, ``openai``, ``anthropic``,
``responses``, ``gemini`` (aiohttp handlers) and ``server`` (routing, start-up).

The Responses and Gemini endpoints answer ``input: "Hi"`` and a one-turn ``contents``
with the same text as ``prompt: "Hi"``; asked for reasoning or given tools, they stream
``expected_reasoning`` first or answer with a tool call (their modules say how).
"""

from __future__ import annotations

from llmbatch.mockserver.answers import expected_reasoning, expected_text, expected_tokens
from llmbatch.mockserver.config import FAULT_KINDS, HEADER_MODES, LIMIT_MODES, MockConfig
from llmbatch.mockserver.server import MockServer, start_mock_server
from llmbatch.mockserver.state import MockStats

__all__ = [
    "FAULT_KINDS",
    "HEADER_MODES",
    "LIMIT_MODES",
    "MockConfig",
    "MockServer",
    "MockStats",
    "expected_reasoning",
    "expected_text",
    "expected_tokens",
    "start_mock_server",
]
