"""nginx as a child process in front of the mock: TLS with HTTP/2 to the client, HTTP/1.1
keep-alive to the mock, as a real deployment terminates TLS (issue 24).

Debian's ``nginx-light`` (or ``nginx``) package; nothing needs root: the configuration,
pid file, logs and temporary directories are in the test's tmp directory, and nginx runs
in the foreground (``daemon off``) as a child of the test, on a free loopback port.
The access log writes one JSON line per request: its status, and its body (the prompt).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from llmbatch.mockserver.tls import MockTLS

__all__ = ["NGINX", "Nginx", "run_nginx"]

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)

_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 4096; }}
http {{
    log_format prompts escape=json
        '{{"status":$status,"conn":$connection,"conn_requests":$connection_requests,'
        '"body":"$request_body"}}';
    access_log {tmp}/access.log prompts;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_body_buffer_size 1m;
    upstream mock {{
        server {upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        keepalive_requests {keepalive_requests};
        {extra}
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def run_nginx(
    tmp: Path, upstream: str, tls: MockTLS, *, keepalive_requests: int = 100, extra: str = ""
) -> AsyncIterator[Nginx]:
    """nginx on a free loopback port, proxying to ``upstream`` (host:port, HTTP/1.1)."""
    assert NGINX is not None
    tmp.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        _CONF.format(
            tmp=tmp,
            upstream=upstream,
            port=port,
            cert=tls.cert_file,
            key=tls.key_file,
            keepalive_requests=keepalive_requests,
            extra=extra,
        )
    )
    proc = await asyncio.create_subprocess_exec(
        NGINX,
        "-p",
        str(tmp),
        "-c",
        str(conf),
        "-e",
        "stderr",
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
