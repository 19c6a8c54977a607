"""Build the rate governor a run's config describes."""

from __future__ import annotations

import time

from llmbatch.clock import now
from llmbatch.config.model import RunConfig
from llmbatch.pacing.bucket import Clock
from llmbatch.pacing.governor import RateGovernor
from llmbatch.pacing.headers import family_for

__all__ = ["governor_for"]


def governor_for(
    cfg: RunConfig, *, clock: Clock = now, wall_clock: Clock = time.time
) -> RateGovernor:
    """The governor for ``cfg``: its limits as hard caps, headers read by the profile's family.

    Limits with a minute window get ~1 s of burst; scaled windows scale the burst too.
    ``clock`` and ``wall_clock`` (Unix time) are the governor's (virtual in tests).
    """
    p = cfg.provider
    lim = p.limits
    return RateGovernor(
        rpm=lim.rpm,
        input_tpm=lim.input_tpm,
        output_tpm=lim.output_tpm,
        total_tpm=lim.tpm,
        window_s=lim.window_s,
        burst_s=lim.window_s / 60.0,
        family=family_for(lim.headers, p.name, p.kind),
        header_window_s=lim.header_window_s,
        clock=clock,
        wall_clock=wall_clock,
    )
