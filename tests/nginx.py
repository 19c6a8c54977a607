"""nginx as a child process in front of the mock: TLS with HTTP/2 to the client, HTTP/1.1
keep-alive to the mock, as a real deployment terminates TLS (issue 24).

Debian's ``nginx-light`` (or ``nginx``) package; nothing needs root: the configuration,
pid file, logs and temporary directories are in the test's tmp directory, and nginx runs
in the foreground (``daemon off``) as a child of the test, on a free loopback port.
The configuration is bench/nginx.py's (the benches run the same set-up).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.nginx import NGINX, free_port, nginx_argv, nginx_conf
from llmbatch.mockserver.tls import MockTLS

__all__ = ["NGINX", "Nginx", "run_nginx"]


@dataclass(frozen=True)
class Nginx:
    """A running nginx: its base URL and where it logs."""

    url: str
    access_log: Path

    def requests(self) -> list[dict[str, object]]:
        """The access log: one {"status", "conn", "conn_requests", "body"} per request
        nginx answered (``conn``: its connection's serial number, ``conn_requests``: the
        how-manieth request of that connection it was)."""
        lines = self.access_log.read_bytes().splitlines()
        return [orjson.loads(line) for line in lines if line.strip()]


@asynccontextmanager
async def run_nginx(
    tmp: Path, upstream: str, tls: MockTLS, *, keepalive_requests: int = 100, extra: str = ""
) -> AsyncIterator[Nginx]:
    """nginx on a free loopback port, proxying to ``upstream`` (host:port, HTTP/1.1)."""
    port = free_port()
    conf = nginx_conf(
        tmp,
        upstream=upstream,
        port=port,
        cert=tls.cert_file,
        key=tls.key_file,
        keepalive_requests=keepalive_requests,
        extra=extra,
    )
    proc = await asyncio.create_subprocess_exec(
        *nginx_argv(tmp, conf),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen: list[bytes] = []
    try:
        # nginx logs "start worker process" once it listens: no polling of the port.
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            seen.append(line)
            if not line:
                raise RuntimeError(f"nginx did not start: {b''.join(seen).decode()}")
            if b"start worker process" in line:
                break
        drain = asyncio.create_task(proc.stderr.read())  # keep its pipe from filling
        try:
            yield Nginx(url=f"https://127.0.0.1:{port}/v1", access_log=tmp / "access.log")
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
            await asyncio.wait_for(proc.wait(), 30)
            await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
