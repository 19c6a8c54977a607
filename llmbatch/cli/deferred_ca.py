"""Import aiohttp without loading the system CA bundle twice at import time.

aiohttp builds two module-level SSL contexts when it is imported (its defaults for
``ssl=True`` and ``ssl=False``), and each one reads the whole CA bundle
(``set_default_verify_paths``): ~40 ms of CPU apiece, a third of a one-prompt run's
start-up, for contexts llmbatch never uses (its adapters bring their own, tls.py).

``import_aiohttp()`` imports aiohttp with that one call deferred: each context made
during the import keeps every setting it was given (CERT_REQUIRED and hostname checks
for the verified one) and loads the default CA paths the first time anything uses it:
``wrap_bio`` (asyncio and uvloop), ``wrap_socket``, ``get_ca_certs``,
``cert_store_stats``, ``load_verify_locations``. So no code can handshake through them
without the CAs; and were some path to bypass those methods, the verified context
would still require a certificate chain and fail closed, never open.

Only the CLI calls this, in its own process, before anything else imported aiohttp:
the library inside someone else's application never patches ssl. When aiohttp is
already imported it does nothing.
"""

from __future__ import annotations

import functools
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["import_aiohttp", "pending_contexts"]

# Methods through which a context is used or inspected; each loads the CAs first.
_USES = ("wrap_bio", "wrap_socket", "get_ca_certs", "cert_store_stats", "load_verify_locations")
_lock = threading.Lock()
_pending: list[ssl.SSLContext] = []  # contexts whose default CA paths are not loaded yet


def pending_contexts() -> int:
    """How many deferred contexts have not loaded their CAs yet (for tests)."""
    return len(_pending)


def import_aiohttp() -> None:
    """Import aiohttp, deferring its import-time CA loading to first use (see above)."""
    if "aiohttp" in sys.modules:
        return
    cls = ssl.SSLContext
    own = "set_default_verify_paths" in cls.__dict__  # else inherited from _ssl
    original = cls.set_default_verify_paths

    def deferred(self: ssl.SSLContext) -> None:
        _defer(self, original)

    cls.set_default_verify_paths = deferred  # type: ignore[method-assign]
    try:
        import aiohttp  # noqa: F401
    finally:
        if own:
            cls.set_default_verify_paths = original  # type: ignore[method-assign]
        else:
            del cls.set_default_verify_paths


def _defer(ctx: ssl.SSLContext, load: Callable[[ssl.SSLContext], None]) -> None:
    """Make the first use of ``ctx`` load its default CA paths, then undo the hooks."""
    state = {"loaded": False}

    def ensure() -> None:
        with _lock:
            if state["loaded"]:
                return
            load(ctx)
            state["loaded"] = True
            for name in _USES:
                ctx.__dict__.pop(name, None)  # back to the class's own methods
            if ctx in _pending:
                _pending.remove(ctx)

    for name in _USES:
        method = getattr(ssl.SSLContext, name)
        ctx.__dict__[name] = _loading_first(method, ctx, ensure)
    with _lock:
        _pending.append(ctx)


def _loading_first(
    method: Callable[..., Any], ctx: ssl.SSLContext, ensure: Callable[[], None]
) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        ensure()
        return method(ctx, *args, **kwargs)

    return call
