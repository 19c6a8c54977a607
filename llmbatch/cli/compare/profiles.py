"""Load profiles: how hard a compare step pushes a target, and the ladder a sweep climbs.

A profile is written ``KIND:LEVELS`` on the command line (``--profile``, repeatable):

- ``concurrent:1,2,4,8`` closed loop: N requests in flight, the next sent as one ends
  (vLLM ``--max-concurrency N`` with ``--request-rate inf``; GuideLLM ``concurrent``;
  ``synchronous`` is ``concurrent:1``);
- ``constant:5,10,20`` open loop: requests sent at R per second, evenly spaced
  (vLLM ``--request-rate R --burstiness`` very large; GuideLLM ``constant``);
- ``poisson:5,10,20`` open loop with exponential gaps (vLLM ``--request-rate R``,
  burstiness 1; GuideLLM ``poisson``); ``--burstiness B`` makes them gamma gaps.

Open-loop profiles take ``--max-concurrency`` (a cap on requests in flight, as vLLM's)
and ``--ramp-up linear|exponential`` over ``--ramp-up-s`` seconds. Each level of each
profile is one step of the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmbatch.engine.arrivals import ArrivalProfile
from llmbatch.errors import ConfigError

__all__ = ["LoadProfile", "Step", "parse_profile"]

KINDS = ("concurrent", "constant", "poisson", "synchronous")
# Requests in flight of an open-loop step without --max-concurrency: effectively
# unbounded (vLLM's default), within the file-descriptor limit (engine/fdlimit.py).
OPEN_LOOP_IN_FLIGHT = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadProfile:
    """One ``--profile``: its kind, its ladder of levels and the open-loop settings."""

    kind: str
    levels: tuple[float, ...]
    burstiness: float = 1.0
    max_concurrency: int | None = None
    ramp: str | None = None
    ramp_up_s: float = 0.0
    seed: int = 0

    @property
    def open_loop(self) -> bool:
        """True for a request-rate profile (constant or poisson)."""
        return self.kind in ("constant", "poisson")

    @property
    def label(self) -> str:
        """``concurrent``, ``poisson``, ``poisson(b=0.5)``, ``constant(max 64)``..."""
        extra = []
        if self.kind == "poisson" and self.burstiness != 1.0:
            extra.append(f"b={self.burstiness:g}")
        if self.open_loop and self.max_concurrency is not None:
            extra.append(f"max {self.max_concurrency}")
        if self.ramp is not None:
            extra.append(f"{self.ramp} ramp {self.ramp_up_s:g}s")
        return self.kind + (f"({', '.join(extra)})" if extra else "")

    def steps(self) -> list[Step]:
        """The ladder, lowest load first."""
        return [Step(self, level) for level in sorted(self.levels)]

    def as_dict(self) -> dict[str, object]:
        """The profile as recorded in compare.json."""
        return {
            "kind": self.kind,
            "levels": list(self.levels),
            "burstiness": self.burstiness if self.open_loop else None,
            "max_concurrency": self.max_concurrency,
            "ramp_up": self.ramp,
            "ramp_up_s": self.ramp_up_s if self.ramp else None,
            "seed": self.seed if self.kind == "poisson" else None,
        }


@dataclass(frozen=True, slots=True)
class Step:
    """One level of a profile: a concurrency (closed loop) or a request rate (open)."""

    profile: LoadProfile
    level: float

    @property
    def concurrency(self) -> int:
        """The in-flight limit the step runs with."""
        p = self.profile
        if not p.open_loop:
            return int(self.level)
        return p.max_concurrency or OPEN_LOOP_IN_FLIGHT

    @property
    def request_rate(self) -> float | None:
        """The requested rate (req/s) of an open-loop step; None when closed loop."""
        return self.level if self.profile.open_loop else None

    @property
    def tag(self) -> str:
        """``c8`` (closed loop) or ``r12.5`` (open loop): part of the run directory name."""
        return f"r{self.level:g}" if self.profile.open_loop else f"c{int(self.level)}"

    def arrivals(self, repeat: int = 0) -> ArrivalProfile | None:
        """The arrival schedule of an open-loop step (a fresh seed per repeat)."""
        p = self.profile
        if not p.open_loop:
            return None
        return ArrivalProfile(
            rate_rps=self.level,
            kind=p.kind,
            burstiness=p.burstiness,
            ramp=p.ramp,
            ramp_up_s=p.ramp_up_s,
            seed=p.seed + repeat,
        )


def parse_profile(
    spec: str,
    *,
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    ramp: str | None = None,
    ramp_up_s: float = 0.0,
    seed: int = 0,
) -> LoadProfile:
    """``KIND:L1,L2,...`` (``synchronous`` alone) as a LoadProfile; ConfigError if bad."""
    kind, _, levels_spec = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"--profile {spec!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    if kind == "synchronous":
        if levels_spec.strip() not in ("", "1"):
            raise ConfigError(f"--profile {spec!r}: synchronous takes no levels")
        kind, levels_spec = "concurrent", "1"
    if not levels_spec.strip():
        what = "concurrencies" if kind == "concurrent" else "request rates (req/s)"
        raise ConfigError(f"--profile {spec!r}: give the {what}, e.g. {kind}:1,2,4")
    levels: list[float] = []
    for part in levels_spec.split(","):
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"--profile {spec!r}: {part!r} is not a number") from None
        if not v > 0 or v == float("inf"):
            raise ConfigError(f"--profile {spec!r}: levels must be positive, got {part!r}")
        if kind == "concurrent" and not v.is_integer():
            raise ConfigError(f"--profile {spec!r}: a concurrency is a whole number, got {part!r}")
        if v not in levels:
            levels.append(v)
    open_loop = kind in ("constant", "poisson")
    if not open_loop and (max_concurrency is not None or ramp is not None):
        raise ConfigError(
            f"--profile {spec!r}: --max-concurrency and --ramp-up apply to request-rate "
            "profiles (constant, poisson); a concurrent profile's levels are its concurrency"
        )
    if max_concurrency is not None and max_concurrency < 1:
        raise ConfigError(f"--max-concurrency must be >= 1, got {max_concurrency}")
    if not burstiness > 0:
        raise ConfigError(f"--burstiness must be > 0, got {burstiness:g}")
    if ramp is not None and ramp not in ("linear", "exponential"):
        raise ConfigError(f"--ramp-up must be linear or exponential, got {ramp!r}")
    if ramp is not None and not ramp_up_s > 0:
        raise ConfigError("--ramp-up needs --ramp-up-s SECONDS > 0")
    return LoadProfile(
        kind=kind,
        levels=tuple(levels),
        burstiness=burstiness if kind == "poisson" else 1.0,
        max_concurrency=max_concurrency if open_loop else None,
        ramp=ramp,
        ramp_up_s=ramp_up_s if ramp else 0.0,
        seed=seed,
    )
