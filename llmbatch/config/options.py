"""Every run option, declared once.

An :class:`Option` names a setting once; everything else is derived from it:

- the ``llmbatch run`` flag: ``--`` + the name with dashes, unless ``flag`` says otherwise
  (cli/app.py builds the command's parameters from ``RUN_OPTIONS``);
- the key in config.toml's ``[run]`` table and the ``LLMBATCH_<NAME>`` environment
  variable (config/files.py reads both through ``RUN_OPTIONS``);
- the ``llmbatch.Client`` keyword (``ClientKeywords`` below is the type checker's view of
  the same names; tests/test_options.py keeps the two equal).

``scope`` says where a value lands: a ``RunConfig`` field (``run``), an override of the
provider profile (``provider``), or of its rate limits (``limits``). ``sources`` says where it
may be given: the command line (``cli``), config.toml and the environment (``config``),
``Client(...)`` (``client``). Units are in the names (``grace_s``, ``max_runtime_s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

__all__ = ["RUN_OPTIONS", "ClientKeywords", "Option", "option", "options_in"]

Scope = Literal["run", "provider", "limits", "command"]
Source = Literal["cli", "config", "client"]
_EVERYWHERE: tuple[Source, ...] = ("cli", "config", "client")


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One run option: its name, type, help, and where it may be given."""

    name: str
    type: type
    help: str
    scope: Scope = "run"
    sources: tuple[Source, ...] = _EVERYWHERE
    flag: str | None = None  # the long flag when it is not --<name-with-dashes>
    short: str | None = None
    switch: bool = False  # a boolean flag: --flag/--no-flag (True) or just --flag (False)
    choices: tuple[str, ...] = ()

    @property
    def long_flag(self) -> str:
        """The option's long flag, e.g. ``--max-runtime-s``."""
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable that sets it (when config files may)."""
        return "LLMBATCH_" + self.name.upper()


RUN_OPTIONS: tuple[Option, ...] = (
    Option(
        name="provider",
        type=str,
        short="-p",
        sources=("cli", "config"),  # the Client takes it as its first argument
        help="Provider profile: a built-in one (mock, openai, anthropic, vllm, ...) or "
        "one from config.toml (default: mock, the built-in mock server).",
    ),
    Option(name="base_url", type=str, scope="provider", help="Override the provider's base URL."),
    Option(name="model", type=str, scope="provider", help="Override the provider's model."),
    Option(
        name="api_key_env",
        type=str,
        scope="provider",
        help="Environment variable holding the API key (for a server the profile sends no "
        "key to, e.g. a vLLM started with --api-key).",
    ),
    Option(
        name="concurrency",
        type=str,
        short="-j",
        help="Requests in flight (default 32), or auto (adaptive, up to max_concurrency).",
    ),
    Option(
        name="max_concurrency",
        type=int,
        sources=("config", "client"),
        help="The ceiling of --concurrency auto (default 256).",
    ),
    Option(name="rpm", type=float, scope="limits", help="Requests per minute limit."),
    Option(name="tpm", type=float, scope="limits", help="Tokens (in + out) per minute limit."),
    Option(name="input_tpm", type=float, scope="limits", help="Input tokens per minute limit."),
    Option(name="output_tpm", type=float, scope="limits", help="Output tokens per minute limit."),
    Option(
        name="client",
        type=str,
        choices=("aiohttp", "httpx", "httpx-aiohttp", "native"),
        help="HTTP client adapter: aiohttp (default), httpx, httpx-aiohttp or native.",
    ),
    Option(name="http2", type=bool, switch=True, help="HTTP/2 over TLS (native, httpx)."),
    Option(
        name="insecure",
        type=bool,
        switch=True,
        help="Do not verify TLS certificates (tests only).",
    ),
    Option(
        name="ca_bundle",
        type=Path,
        help="PEM file of the CAs to trust (default: $SSL_CERT_FILE, else system).",
    ),
    Option(
        name="grace_s",
        type=float,
        sources=("config", "client"),
        help="Seconds requests in flight may finish after a stop (default 30).",
    ),
    Option(
        name="max_answer_bytes",
        type=int,
        sources=("config", "client"),
        help="Bytes one answer may take before the client ends it (default 256 MiB).",
    ),
    Option(
        name="max_event_bytes",
        type=int,
        sources=("config", "client"),
        help="Bytes one server-sent event (or line) may take (default 16 MiB).",
    ),
    Option(
        name="run_dir",
        type=Path,
        flag="--run-dir",
        short="-o",
        sources=("cli",),
        help="Run directory (default outputs_dir/<prompts>-<provider>[-<model>]).",
    ),
    Option(
        name="outputs_dir",
        type=Path,
        sources=("cli", "config"),
        help="Where default run directories go (default outputs).",
    ),
    Option(
        name="text_files",
        type=bool,
        flag="--text",
        switch=True,
        sources=("cli", "config"),
        help="Write the answers' text as it streams (default); results.jsonl has it anyway.",
    ),
    Option(
        name="text_layout",
        type=str,
        choices=("files", "log"),
        sources=("cli", "config"),
        help="Text output: files (text/<id>.txt per request, the default) or log (one "
        "append-only text.log, offsets in each record: no file per request).",
    ),
    Option(
        name="keep_partial",
        type=bool,
        sources=("cli", "config"),
        help="Keep the text of requests that failed.",
    ),
    Option(
        name="max_runtime_s",
        type=float,
        sources=("cli", "config"),
        help="Stop dispatching after this many seconds (exit 75, resumable).",
    ),
    Option(
        name="retry_failed",
        type=bool,
        sources=("cli",),
        help="Run the failed records of this run again.",
    ),
    Option(
        name="rerun_changed",
        type=bool,
        sources=("cli",),
        help="Run again the done prompts whose request changed since their answer was "
        "recorded (same id, other text); without it they are counted and kept.",
    ),
    Option(
        name="force_resume",
        type=bool,
        sources=("cli",),
        help="Continue a run directory made for another base URL, model or provider.",
    ),
    Option(
        name="progress",
        type=bool,
        switch=True,
        sources=("cli", "config"),
        help="Progress bar (default: when stderr is a terminal).",
    ),
    Option(
        name="max_cost",
        type=float,
        help="Budget in USD for the whole run: no request is sent that could pass it "
        "(exit 4; the same command with a larger one resumes). See docs/cost.md.",
    ),
    # Options of the command itself: they choose how it runs, not what a Client does.
    Option(
        name="config",
        type=Path,
        short="-c",
        scope="command",
        sources=("cli",),
        help="Config file (default: ./config.toml if present).",
    ),
    Option(
        name="slo",
        type=str,
        scope="command",
        sources=("cli",),
        help="Goodput objectives, e.g. ttft=0.5,tpot=0.05 (seconds).",
    ),
    Option(
        name="shard",
        type=str,
        scope="command",
        sources=("cli",),
        help="Run only shard I/N of the ids (stable hash), into its own run directory.",
    ),
    Option(
        name="engine",
        type=str,
        choices=("local", "ray"),
        scope="command",
        sources=("cli",),
        help="local (one process, the default) or ray (a Ray cluster; the ray extra).",
    ),
    Option(
        name="request_rate",
        type=float,
        scope="command",
        sources=("cli",),
        help="Open loop: send requests at this rate (req/s, Poisson arrivals as vllm bench "
        "serve sends them) instead of keeping --concurrency busy; --concurrency stays the cap.",
    ),
    Option(
        name="burstiness",
        type=float,
        scope="command",
        sources=("cli",),
        help="With --request-rate: gamma-distributed gaps of this shape (1: Poisson; lower is "
        "burstier, higher is steadier).",
    ),
    Option(
        name="ray_address",
        type=str,
        scope="command",
        sources=("cli",),
        help="Ray cluster (default: RAY_ADDRESS, else a local Ray).",
    ),
    Option(
        name="ray_workers",
        type=int,
        scope="command",
        sources=("cli",),
        help="Ray worker actors (default: one per node).",
    ),
    Option(
        name="dry_run",
        type=bool,
        scope="command",
        sources=("cli",),
        help="Estimate the requests, tokens and cost of the run (docs/cost.md); send nothing.",
    ),
)

_BY_NAME = {o.name: o for o in RUN_OPTIONS}


def option(name: str) -> Option:
    """The option called ``name`` (KeyError for an unknown one)."""
    return _BY_NAME[name]


def options_in(source: Source, *scopes: Scope) -> tuple[Option, ...]:
    """The options that may be given from ``source``, optionally only of ``scopes``."""
    return tuple(
        o for o in RUN_OPTIONS if source in o.sources and (not scopes or o.scope in scopes)
    )


class ClientKeywords(TypedDict, total=False):
    """``llmbatch.Client``'s run options, as keywords (``RUN_OPTIONS`` with source client).

    Spelled out for the type checker; tests/test_options.py checks it names exactly the
    options whose sources include ``client``, with their types.
    """

    base_url: str
    model: str
    api_key_env: str
    concurrency: int | str
    max_concurrency: int
    rpm: float
    tpm: float
    input_tpm: float
    output_tpm: float
    client: str
    http2: bool
    insecure: bool
    ca_bundle: str | Path
    grace_s: float
    max_answer_bytes: int
    max_event_bytes: int
    max_cost: float
