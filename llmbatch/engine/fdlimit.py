"""Fit the requested concurrency to the process's open-file limit (RLIMIT_NOFILE).

Each request in flight holds a socket, its text file while it streams and, with the
embedded mock, the server's end of the connection too. Past the limit every new
socket fails with EMFILE ("Too many open files"): thousands of failed requests and
no useful work. So at start the soft limit is raised towards the hard limit, and
when that is still too low the concurrency is capped to what fits, with one line
saying so.
"""

from __future__ import annotations

import dataclasses
import resource

from llmbatch.config.model import RunConfig

__all__ = ["RESERVED_FDS", "fit_concurrency", "fit_run_config"]

# Descriptors the process needs besides requests: interpreter, event loop, run files.
RESERVED_FDS = 64


def fit_concurrency(concurrency: int, *, fds_per_request: int) -> tuple[int, str | None]:
    """(concurrency that fits the open-file limit, a notice when it had to be capped)."""
    need = concurrency * fds_per_request + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return concurrency, None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # not allowed here: cap instead
    if soft >= need:
        return concurrency, None
    fits = max(1, (soft - RESERVED_FDS) // fds_per_request)
    return fits, (
        f"the open-file limit ({soft}, hard limit {_show(hard)}) allows about {fits} "
        f"requests in flight, not {concurrency}: concurrency capped at {fits} "
        "(raise it with ulimit -n to go higher)"
    )


def _show(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def fit_run_config(cfg: RunConfig) -> tuple[RunConfig, str | None]:
    """(``cfg`` with its concurrency capped to the open-file limit, the notice saying so).

    The CLI prints the notice as a warning line, a library Client warns with it.
    """
    per_request = 1 + int(cfg.text_files) + int(cfg.provider.embedded_mock)
    wanted = cfg.max_concurrency if cfg.adaptive else cfg.concurrency
    fits, notice = fit_concurrency(wanted, fds_per_request=per_request)
    if notice is None:
        return cfg, None
    if cfg.adaptive:
        capped = dataclasses.replace(
            cfg, max_concurrency=fits, concurrency=min(cfg.concurrency, fits)
        )
    else:
        capped = dataclasses.replace(cfg, concurrency=fits)
    return capped, notice
