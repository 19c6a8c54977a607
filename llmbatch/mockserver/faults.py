"""Which fault (if any) a request gets: forced by headers, or picked by configured rates.

Plain logic (no aiohttp): rates pick prompts by a hash of their content and hit only
their first ``fault_attempts`` attempts, so a retrying client always gets through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from llmbatch.mockserver.config import MockConfig

__all__ = ["FaultPicker"]


def int_header(headers: Mapping[str, str], name: str, default: int | None) -> int | None:
    """An integer request header, or ``default`` when absent or malformed."""
    val = headers.get(name)
    if val is None:
        return default
    try:
        return int(val)
    except ValueError:
        return default


class FaultPicker:
    """Per-prompt attempt counting and fault choice."""

    def __init__(self, cfg: MockConfig) -> None:
        self._cfg = cfg
        self._attempts: dict[bytes, int] = {}

    def clear(self) -> None:
        """Forget attempt counts (POST /mock/reset)."""
        self._attempts.clear()

    def pick(self, key: bytes, headers: Mapping[str, str]) -> str | None:
        """The fault for this attempt of prompt ``key`` (``x-mock-fault`` forces one)."""
        forced = headers.get("x-mock-fault")
        limit = int_header(headers, "x-mock-fault-attempts", None)
        cfg = self._cfg
        if forced is None and not cfg.faults:
            return None
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        if forced:
            return forced if limit is None or attempt <= limit else None
        if attempt > cfg.fault_attempts:
            return None
        # A stable point in [0, 1) per prompt, mapped onto the cumulative fault rates.
        u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64
        acc = 0.0
        for kind, rate in cfg.faults.items():
            acc += rate
            if u < acc:
                return kind
        return None
