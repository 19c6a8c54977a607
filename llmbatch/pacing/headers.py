"""Rate-limit headers read by what each provider family means by them.

A response's headers become :class:`Report` values: for one limit (requests, input
tokens, output tokens or tokens), the ``limit``, what is ``remaining`` now, and
``reset_s``: how long until the budget is whole again. Families differ in names, in the
window they count over and in the reset's format (RESEARCH.md section 8):

- ``openai``: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; reset a Go
  duration ("1s", "6m0s", "12ms") = time until back to the initial state: continuous refill.
- ``anthropic``: ``anthropic-ratelimit-{requests,input-tokens,output-tokens,tokens}-*``,
  reset an RFC 3339 time; token bucket (continuous); ``tokens-*`` is the most restrictive
  token limit, so it is read only when the input/output headers are absent.
- ``groq``: OpenAI's names, but the requests headers count per day, the tokens per minute.
- ``together``: ``x-ratelimit-{limit,remaining,reset}`` (requests) and
  ``x-tokenlimit-{limit,remaining}``; "measured in seconds, displayed in minutes": the
  figures are per minute, the budget is enforced per second (a sixtieth of them).
- ``azure``: ``x-ratelimit-remaining-{requests,tokens}`` only, over 1 or 10 s windows
  (10 s unless the config says ``header_window_s = 1``).
- ``cerebras``: the window is in the name: ``x-ratelimit-limit-requests-day``,
  ``x-ratelimit-remaining-tokens-minute``, ...
- ``openrouter``: ``x-ratelimit-{limit,remaining,reset}`` (reset in Unix milliseconds),
  sent with 429s only.
- ``generic``: any of the above names (OpenAI-compatible servers of unknown kind).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "FAMILIES",
    "HeaderFamily",
    "Report",
    "family_for",
    "parse_count",
    "parse_duration_s",
    "parse_reset_s",
]

DAY_S = 86400.0

_DURATION_UNITS_S = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # Go prints microseconds with the micro sign...
    "\u03bcs": 1e-6,  # ...which is easily confused with Greek mu
    "ns": 1e-9,
}
_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
# Longer units first so "ms" is not read as "m" followed by garbage.
_UNIT = "(?:" + "|".join(sorted(_DURATION_UNITS_S, key=len, reverse=True)) + ")"
_DURATION_RE = re.compile(rf"(?:{_NUM}{_UNIT})+")
_DURATION_PART_RE = re.compile(rf"({_NUM})({_UNIT})")
_PLAIN_NUMBER_RE = re.compile(_NUM)
_RFC3339_PREFIX_RE = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
# A bare number this large is a point in time, not a duration: Unix seconds after
# 2001-09-09, or Unix milliseconds (OpenRouter).
_UNIX_S_FROM = 1e9
_UNIX_MS_FROM = 1e11


def parse_duration_s(text: str) -> float | None:
    """A Go-style duration as OpenAI sends it ("1s", "6m0s", "20ms", "1m30.5s").

    A bare number is taken as seconds. Returns None for anything malformed or negative.
    """
    value = text.strip()
    if _PLAIN_NUMBER_RE.fullmatch(value):
        return float(value)
    if not _DURATION_RE.fullmatch(value):
        return None
    return sum(float(n) * _DURATION_UNITS_S[u] for n, u in _DURATION_PART_RE.findall(value))


def parse_reset_s(text: str, wall_now_s: float) -> float | None:
    """Seconds until a reset given as a duration, an RFC 3339 time or a Unix time.

    ``wall_now_s`` is the current Unix time. A time in the past gives 0.0; an RFC 3339
    time without an offset is taken as UTC; a bare number above 1e9 is Unix seconds and
    above 1e11 Unix milliseconds. Returns None for anything malformed.
    """
    duration_s = parse_duration_s(text)
    if duration_s is not None:
        if duration_s >= _UNIX_MS_FROM:
            return max(0.0, duration_s / 1000.0 - wall_now_s)
        if duration_s >= _UNIX_S_FROM:
            return max(0.0, duration_s - wall_now_s)
        return duration_s
    value = text.strip().upper()  # RFC 3339 allows lower-case "t" and "z"
    if not _RFC3339_PREFIX_RE.match(value):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - wall_now_s)


def parse_count(text: str | None) -> float | None:
    """A non-negative finite number, or None."""
    if text is None:
        return None
    try:
        value = float(text.strip())
    except (TypeError, ValueError, AttributeError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


@dataclass(frozen=True, slots=True)
class Report:
    """What one response said about one limit.

    ``name`` is requests, input_tokens, output_tokens or tokens; ``window_s`` is the
    window the figures count over when the family (or the config) knows it. ``key``
    tells apart several limits on one name (requests per minute and per day).
    """

    name: str
    limit: float | None
    remaining: float | None
    reset_s: float | None
    window_s: float | None

    @property
    def key(self) -> str:
        return self.name if self.window_s is None else f"{self.name}/{self.window_s:g}s"


@dataclass(frozen=True, slots=True)
class _Group:
    """The headers of one limit: (limit, remaining, reset) names, any of them absent."""

    name: str
    limit: str | None
    remaining: str
    reset: str | None
    window_s: float | None
    scale: float = 1.0  # Together displays per minute what it enforces per second
    # Read only when no input/output token headers came (Anthropic's combined tokens-*).
    fallback: bool = False


def _openai_groups(requests_window_s: float | None, tokens_window_s: float | None) -> list[_Group]:
    return [
        _Group(
            name,
            f"x-ratelimit-limit-{label}",
            f"x-ratelimit-remaining-{label}",
            f"x-ratelimit-reset-{label}",
            window_s,
        )
        for name, label, window_s in (
            ("requests", "requests", requests_window_s),
            ("tokens", "tokens", tokens_window_s),
        )
    ]


_ANTHROPIC = [
    _Group(
        name,
        f"{prefix}-limit",
        f"{prefix}-remaining",
        f"{prefix}-reset",
        60.0,
        fallback=name == "tokens",
    )
    for name, prefix in (
        ("requests", "anthropic-ratelimit-requests"),
        ("input_tokens", "anthropic-ratelimit-input-tokens"),
        ("output_tokens", "anthropic-ratelimit-output-tokens"),
        ("tokens", "anthropic-ratelimit-tokens"),
    )
]
_CEREBRAS = [
    _Group(
        name,
        f"x-ratelimit-limit-{name}-{unit}",
        f"x-ratelimit-remaining-{name}-{unit}",
        f"x-ratelimit-reset-{name}-{unit}",
        window_s,
    )
    for name in ("requests", "tokens")
    for unit, window_s in (("second", 1.0), ("minute", 60.0), ("hour", 3600.0), ("day", DAY_S))
]
_PLAIN = _Group("requests", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", None)


@dataclass(frozen=True, slots=True)
class HeaderFamily:
    """How one provider family's rate-limit headers are named and meant.

    ``continuous``: the server refills continuously and ``reset`` is the time until the
    budget is full again, so the pace between reports is (limit - remaining) / reset.
    Otherwise only what is safe everywhere is assumed: ``remaining`` can be spent now,
    and by ``reset`` the budget is whole again.
    """

    name: str
    groups: tuple[_Group, ...]
    continuous: bool = False
    default_window_s: float | None = None  # for groups whose window the names do not give
    # Every header name the groups read (one set test tells a response without any).
    _names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = {n for g in self.groups for n in (g.limit, g.remaining, g.reset) if n}
        object.__setattr__(self, "_names", frozenset(names))

    def read(
        self, headers: Mapping[str, str], wall_now_s: float, window_s: float | None = None
    ) -> list[Report]:
        """The reports in ``headers`` (keys case-insensitive; malformed values ignored).

        ``window_s`` (from the config) is the window of groups the family leaves open.
        """
        lowered = {str(k).lower(): v for k, v in headers.items()}
        if lowered.keys().isdisjoint(self._names):
            return []  # no rate-limit header at all (most responses of most servers)
        split_tokens = any(
            k in lowered
            for g in self.groups
            if g.name in ("input_tokens", "output_tokens")
            for k in (g.limit, g.remaining)
        )
        out: list[Report] = []
        for g in self.groups:
            if g.fallback and split_tokens:
                continue
            names = [n for n in (g.limit, g.remaining, g.reset) if n is not None]
            if not any(n in lowered for n in names):
                continue
            limit = parse_count(lowered.get(g.limit)) if g.limit else None
            remaining = parse_count(lowered.get(g.remaining))
            reset_s = None
            if g.reset is not None and g.reset in lowered:
                try:
                    reset_s = parse_reset_s(str(lowered[g.reset]), wall_now_s)
                except (OverflowError, ValueError):
                    reset_s = None
            if limit is not None and limit <= 0:
                limit = None
            if limit is None and remaining is None:
                continue
            if g.scale != 1.0:
                limit = None if limit is None else limit * g.scale
                remaining = None if remaining is None else remaining * g.scale
            win = g.window_s if g.window_s is not None else (window_s or self.default_window_s)
            out.append(Report(g.name, limit, remaining, reset_s, win))
        return out


FAMILIES: dict[str, HeaderFamily] = {
    f.name: f
    for f in (
        HeaderFamily("openai", tuple(_openai_groups(None, None)), continuous=True),
        HeaderFamily("anthropic", tuple(_ANTHROPIC), continuous=True),
        HeaderFamily("groq", tuple(_openai_groups(DAY_S, 60.0))),
        HeaderFamily(
            "together",
            (
                _Group(
                    "requests",
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                    1.0,
                    scale=1 / 60,
                ),
                _Group("tokens", "x-tokenlimit-limit", "x-tokenlimit-remaining", None, 1.0, 1 / 60),
            ),
        ),
        HeaderFamily(
            "azure",
            (
                _Group("requests", None, "x-ratelimit-remaining-requests", None, None),
                _Group("tokens", None, "x-ratelimit-remaining-tokens", None, None),
            ),
            default_window_s=10.0,
        ),
        HeaderFamily("cerebras", tuple(_CEREBRAS)),
        HeaderFamily(
            "openrouter",
            (
                _Group(
                    "requests",
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                    60.0,
                ),
            ),
        ),
        HeaderFamily(
            "generic", tuple(_openai_groups(None, None) + _ANTHROPIC + _CEREBRAS + [_PLAIN])
        ),
        HeaderFamily("none", ()),
    )
}

# Provider profile names and kinds whose family is known.
_BY_PROFILE = {"openai": "openai", "anthropic": "anthropic", "groq": "groq", "together": "together"}
_BY_PROFILE |= {"azure": "azure", "cerebras": "cerebras", "openrouter": "openrouter"}
# Gemini sends no rate-limit headers; its 429s say when to retry in the body (errors.py).
_BY_PROFILE |= {"gemini": "none"}


def family_for(configured: str, profile: str, kind: str) -> HeaderFamily:
    """The family a config names, else the provider profile's, else by the API kind."""
    if configured:
        return FAMILIES[configured]
    name = _BY_PROFILE.get(profile) or ("anthropic" if kind == "anthropic" else "generic")
    return FAMILIES[name]
