"""Keeping secrets out of everything llmbatch prints or writes.

A Client's secrets are its API key, the credentials in its base URL
(``http://user:pass@host/v1``) and the values of its authentication headers. Every field
of a failed attempt that came from the server (the message, the error body, the request
id, the headers, a redirect's Location) is redacted here *before* anything shortens it,
so a cut can never keep half a key: ``scrub`` redacts, then clips. Where a parser quoted
a shortened piece of server text on its own (a bad chunk in a message), a piece of a
secret of MIN_FRAGMENT or more characters at the edge of a run of key characters is
redacted as well. A successful answer's request id is redacted the same way.

Answers themselves are kept as the server sent them.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping

from llmbatch.errors import Redirected, RequestError, StatusError

__all__ = [
    "MESSAGE_LIMIT",
    "REDACTED",
    "Redactor",
    "header_secrets",
    "url_secrets",
    "url_without_credentials",
]

REDACTED = "[REDACTED]"
# Characters of a message kept (records, attempts, the terminal), counted after redaction.
MESSAGE_LIMIT = 500
# Characters of an error body and of a request id kept, after redaction.
BODY_LIMIT = 2000
ID_LIMIT = 200
# A piece of a secret this long at the edge of a run of key characters is redacted too.
MIN_FRAGMENT = 8
# What API keys are made of (OpenAI, Anthropic, Groq, Google, Hugging Face, ...).
_KEY_RUN = re.compile(rf"[A-Za-z0-9_\-]{{{MIN_FRAGMENT},}}")
# Request headers whose values are credentials.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|session", re.IGNORECASE)


class Redactor:
    """Replaces a Client's secrets in text; ``scrub`` cleans a failed attempt's error."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        found = {s for s in secrets if s and len(s) >= 4}
        self.secrets = tuple(sorted(found, key=len, reverse=True))

    def text(self, value: str) -> str:
        """``value`` with every secret, and every piece of one at a cut, replaced."""
        if not self.secrets:
            return value
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _KEY_RUN.sub(self._fragments, value)

    def clip(self, value: str, limit: int = MESSAGE_LIMIT) -> str:
        """``value`` redacted, then shortened to ``limit`` characters."""
        value = self.text(value)
        return value if len(value) <= limit else value[: limit - 3] + "..."

    def scrub(self, exc: RequestError) -> None:
        """Redact every field of ``exc`` that came from the server, then shorten them."""
        exc.args = (self.clip(str(exc)),)
        if isinstance(exc, StatusError):
            exc.body = self.clip(exc.body, BODY_LIMIT)
            if exc.request_id is not None:
                exc.request_id = self.clip(exc.request_id, ID_LIMIT)
            exc.headers = {k: self.text(v) for k, v in exc.headers.items()}
            if isinstance(exc, Redirected):
                exc.location = self.text(exc.location)

    def _fragments(self, match: re.Match[str]) -> str:
        run = match.group(0)
        for secret in self.secrets:
            k = _overlap(run, secret)  # the secret's start ends the run: cut after it
            if k:
                run = run[:-k] + REDACTED
            k = _overlap(secret, run)  # the secret's end starts the run: cut before it
            if k:
                run = REDACTED + run[k:]
        return run


def _overlap(a: str, b: str) -> int:
    """The longest k >= MIN_FRAGMENT with a's last k characters equal to b's first k."""
    for k in range(min(len(a), len(b)), MIN_FRAGMENT - 1, -1):
        if a.endswith(b[:k]):
            return k
    return 0


def url_secrets(url: str) -> tuple[str, ...]:
    """The credentials in a URL: ``user:pass`` whole, and each part (as written and
    percent-decoded)."""
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:
        return ()
    userinfo = netloc.rpartition("@")[0]
    if not userinfo:
        return ()
    out = [userinfo]
    for part in userinfo.split(":", 1):
        out += [part, urllib.parse.unquote(part)]
    return tuple(out)


def url_without_credentials(url: str) -> str:
    """``url`` without its ``user:pass@`` (what run.json and messages show)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def header_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The values of the credential headers of a profile (and a bearer token alone)."""
    out: list[str] = []
    for name, value in headers.items():
        if _SECRET_HEADER.search(name):
            out += [value, value.split()[-1] if value.split() else value]
    return tuple(out)
