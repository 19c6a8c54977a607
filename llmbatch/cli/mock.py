"""``llmbatch mock-server``: the built-in mock as a server of its own (llmbatch/mockserver/),
with its answers' timing, faults, rate limits, TLS and HTTP/2 set from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmbatch.cli.common import exit_with
from llmbatch.cli.run import EXIT_USAGE, loop_factory

__all__ = ["mock_server"]


def mock_server(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8000,
    tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 32,
    ttft_ms: Annotated[float, typer.Option(help="Time to first token, ms.")] = 20.0,
    itl_ms: Annotated[float, typer.Option(help="Delay between tokens, ms.")] = 2.0,
    fault: Annotated[
        list[str] | None,
        typer.Option(help="Fault rate KIND=FRACTION (repeatable), e.g. 429=0.1."),
    ] = None,
    fault_attempts: Annotated[int, typer.Option(help="Attempts of a prompt a fault hits.")] = 1,
    retry_after_ms: Annotated[
        float, typer.Option(help="Retry-After of an injected 429, ms.")
    ] = 50.0,
    fault_header: Annotated[
        list[str] | None,
        typer.Option(help="Header NAME=VALUE on injected 429s (repeatable)."),
    ] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per limit window.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per limit window.")] = None,
    rpd: Annotated[
        float | None,
        typer.Option(help="Requests per day; the -requests headers then count per day."),
    ] = None,
    limit_window_s: Annotated[
        float, typer.Option(help="Length of the rate-limit window, s (1, 10, 60...).")
    ] = 60.0,
    input_tpm: Annotated[
        float | None, typer.Option(help="Input tokens per limit window (Anthropic-style).")
    ] = None,
    output_tpm: Annotated[
        float | None, typer.Option(help="Output tokens per limit window (Anthropic-style).")
    ] = None,
    limit_mode: Annotated[
        str,
        typer.Option(
            help="refill (continuous, OpenAI-style), sliding (window log) or fixed (windows)."
        ),
    ] = "refill",
    output_counted: Annotated[
        str, typer.Option(help="Charge output tokens at admission or at the answer's end.")
    ] = "admission",
    tokens_spread: Annotated[
        int, typer.Option(min=0, help="Answers get up to this many tokens more, by prompt.")
    ] = 0,
    limit_headers: Annotated[
        str, typer.Option(help="Send rate-limit headers: always, on_429 or never.")
    ] = "always",
    tls: Annotated[
        bool, typer.Option("--tls", help="HTTPS, with a CA and certificate made now.")
    ] = False,
    http2: Annotated[bool, typer.Option("--http2", help="HTTP/2 (and HTTP/1.1) over TLS.")] = False,
    max_streams: Annotated[
        int, typer.Option(min=1, help="HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS per connection.")
    ] = 100,
    goaway_after: Annotated[
        int | None,
        typer.Option(min=1, help="HTTP/2: send GOAWAY on a connection's Nth stream (like nginx)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="Answer 401 to requests without this API key."),
    ] = None,
    capacity: Annotated[
        int | None,
        typer.Option(
            min=1, help="Streams served at full speed; more in flight slow every stream down."
        ),
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the certificates (default: a temp dir, removed on exit)."
        ),
    ] = None,
) -> None:
    """Serve the mock (/v1/chat/completions, /v1/completions, /v1/messages, /v1/models)."""
    import asyncio

    from llmbatch.mockserver import FAULT_KINDS, MockConfig, start_mock_server
    from llmbatch.mockserver.tls import make_mock_tls

    faults: dict[str, float] = {}
    for spec in fault or []:
        kind, _, rate = spec.partition("=")
        if kind not in FAULT_KINDS:
            raise exit_with(f"--fault: unknown kind {kind!r} (one of {', '.join(FAULT_KINDS)})", 2)
        try:
            faults[kind] = float(rate)
        except ValueError:
            raise exit_with(f"--fault: {kind} needs a fraction, got {rate!r}", 2) from None
    headers: dict[str, str] = {}
    for spec in fault_header or []:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip():
            raise exit_with(f"--fault-header: expected NAME=VALUE, got {spec!r}", 2)
        headers[name.strip().lower()] = value.strip()
    try:
        cfg = MockConfig(
            tokens=tokens,
            ttft_s=ttft_ms / 1000,
            itl_s=itl_ms / 1000,
            faults=faults,
            fault_attempts=fault_attempts,
            retry_after_s=retry_after_ms / 1000,
            fault_headers=headers,
            rpm=rpm,
            tpm=tpm,
            rpd=rpd,
            input_tpm=input_tpm,
            output_tpm=output_tpm,
            limit_window_s=limit_window_s,
            limit_mode=limit_mode,
            limit_headers=limit_headers,
            capacity=capacity,
            api_key=api_key,
            output_counted=output_counted,
            tokens_spread=tokens_spread,
        )
    except ValueError as exc:
        raise exit_with(f"mock-server: {exc}", 2) from None

    if http2 and not tls:
        raise exit_with("--http2 needs --tls (clients negotiate h2 through TLS ALPN)", EXIT_USAGE)
    import shutil
    import signal
    import tempfile

    own_dir = None
    if tls and tls_dir is None:
        own_dir = tls_dir = Path(tempfile.mkdtemp(prefix="llmbatch-mock-tls-"))
    try:
        certs = make_mock_tls(tls_dir) if tls else None
    except (RuntimeError, OSError) as exc:
        raise exit_with(str(exc), EXIT_USAGE) from None

    async def serve() -> None:
        server = await start_mock_server(
            cfg,
            host=host,
            port=port,
            tls=certs,
            http2=http2,
            max_streams=max_streams,
            goaway_after=goaway_after,
        )
        typer.echo(f"mock server listening on {server.url}", err=True)
        if certs is not None:
            proto = f"HTTP/2 (max {max_streams} streams per connection)" if http2 else "HTTP/1.1"
            typer.echo(
                f"serving {proto} over TLS; trust its CA: --ca-bundle {certs.ca_file}", err=True
            )
        stop = asyncio.Event()
        # SIGTERM ends it like Ctrl-C, so the certificates it made are removed.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await server.close()

    from llmbatch.errors import ConfigError

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # LLMBATCH_LOOP
        raise exit_with(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise exit_with(f"cannot listen on {host}:{port}: {exc.strerror}", EXIT_USAGE) from None
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
