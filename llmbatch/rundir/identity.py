"""A run's identity: what its answers mean, kept in ``run.json`` and checked on resume.

Records from one target must never be mixed with another's: the same prompts sent to
another base URL, model, provider kind or with other default parameters give other
answers. A run directory keeps the identity of the run that made it; resuming with a
different one is refused (RunDirError) unless the user forces it, and the forced change
is kept in the file's ``history``.

``run.json`` files written before the identity grew (prompts, provider and model only)
are accepted when those three match, and upgraded with the current values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmbatch.records import PromptRecord
from llmbatch.redaction import url_without_credentials

if TYPE_CHECKING:
    from llmbatch.config.model import RunConfig

__all__ = [
    "EMBEDDED_MOCK_URL",
    "request_hash",
    "IDENTITY_KEYS",
    "describe_changes",
    "merge_identity",
    "run_identity",
]

IDENTITY_KEYS = ("prompts", "provider", "kind", "base_url", "model", "params", "shard")
# Fields older run.json files lack: compared only when the file has them.
_ADDED_KEYS = ("kind", "base_url", "params")
# The embedded mock listens on a new port every run; its identity is the mock itself.
EMBEDDED_MOCK_URL = "embedded-mock"
HISTORY = "history"


def run_identity(cfg: RunConfig, prompts: Path) -> dict[str, Any]:
    """The identity of a run of ``prompts`` with ``cfg`` (headers are left out: secrets)."""
    p = cfg.provider
    return {
        "prompts": str(prompts.resolve()),
        "provider": p.name,
        "kind": p.kind,
        # Never the credentials a URL may carry (user:pass@): run.json is not a secret.
        "base_url": EMBEDDED_MOCK_URL
        if p.embedded_mock
        else url_without_credentials(p.base_url).rstrip("/"),
        "model": p.model,
        "params": dict(p.params),
    }


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Each identity field that differs, as ``key 'old' (now 'new')``.

    A field added since older llmbatch versions (kind, base URL, params) is compared only
    when the old file has it; a missing ``shard`` means the whole file.
    """
    return [
        f"{key} {old.get(key)!r} (now {new.get(key)!r})"
        for key in IDENTITY_KEYS
        if (key in old or key not in _ADDED_KEYS) and old.get(key) != new.get(key)
    ]


def merge_identity(
    old: Mapping[str, Any], new: Mapping[str, Any], *, forced: bool
) -> dict[str, Any] | None:
    """The run.json to write after accepting ``new`` over ``old``; None if nothing changes.

    A forced change appends the old identity to ``history``; an old file without the
    newer fields is upgraded with them.
    """
    history = list(old.get(HISTORY) or [])
    if forced and describe_changes(old, new):
        history.append({k: v for k, v in old.items() if k != HISTORY})
    kept = {k: v for k, v in old.items() if k != HISTORY and k not in IDENTITY_KEYS}
    merged = {**kept, **new}
    if history:
        merged[HISTORY] = history
    return None if merged == dict(old) else merged


def request_hash(rec: PromptRecord) -> str:
    """A short hash of what ``rec`` asks (its body and endpoint, not its id or line): kept
    in its record, so a resume notices a prompt that changed under the same id."""
    canonical = orjson.dumps([rec.endpoint, rec.body], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()
