"""Proxies: none is supported, and a user whose environment asks for one is told so.

No client adapter goes through a proxy: aiohttp's session does not trust the
environment, the httpx adapters bring their own transports, and the native client has
no proxy code. So that this is never a silent surprise, ``ignored_proxy`` names the
variable (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, any case) that would send
requests for a URL through a proxy, unless ``NO_PROXY`` exempts its host or the host is
this machine (a proxy for loopback is never meant).
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Mapping

from llmbatch.redaction import url_without_credentials

__all__ = ["ignored_proxy"]


def ignored_proxy(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A notice when the environment asks for a proxy for ``url`` (llmbatch connects
    directly all the same); None when no proxy variable applies to it."""
    env = os.environ if environ is None else environ
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return None
    names = (f"{parts.scheme}_proxy", f"{parts.scheme}_proxy".upper(), "all_proxy", "ALL_PROXY")
    var = next((name for name in names if env.get(name)), None)
    if var is None or _loopback(host) or _exempt(host, env):
        return None
    return (
        f"{var} is set, but llmbatch supports no proxy: it connects to "
        f"{url_without_credentials(url)} directly (add the host to NO_PROXY to silence this; "
        "see docs/security.md)"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _exempt(host: str, env: Mapping[str, str]) -> bool:
    """NO_PROXY as curl reads it: ``*``, or host names matching themselves and subdomains."""
    entries = (env.get("no_proxy") or env.get("NO_PROXY") or "").split(",")
    host = host.lower()
    for entry in (e.strip().lower() for e in entries):
        if not entry:
            continue
        if entry == "*":
            return True
        domain = entry.lstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False
