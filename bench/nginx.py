"""nginx in front of the mock: TLS and HTTP/2 to the client, HTTP/1.1 keep-alive to the
mock (issue 24). The configuration is shared with tests/nginx.py (which starts it from
asyncio); here it runs as a plain child process of a bench.

Debian's ``nginx-light`` package; no root needed: configuration, pid file, logs and temp
directories live in one directory, and nginx runs in the foreground (``daemon off``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["NGINX", "free_port", "nginx_argv", "nginx_conf", "nginx_process"]

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


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_conf(
    tmp: Path,
    *,
    upstream: str,
    port: int,
    cert: Path,
    key: Path,
    keepalive_requests: int = 100,
    extra: str = "",
) -> Path:
    """Write nginx.conf into ``tmp`` (access.log goes there too): TLS + h2 on ``port``,
    proxying to ``upstream`` (host:port) over HTTP/1.1. The access log has one JSON line
    per request: status, connection serial and its request number, the request body."""
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        _CONF.format(
            tmp=tmp,
            upstream=upstream,
            port=port,
            cert=cert,
            key=key,
            keepalive_requests=keepalive_requests,
            extra=extra,
        )
    )
    return conf


def nginx_argv(tmp: Path, conf: Path) -> list[str]:
    """The command line running ``conf`` in the foreground, logging to stderr."""
    assert NGINX is not None, "nginx is not installed (apt-get install nginx-light)"
    return [NGINX, "-p", str(tmp), "-c", str(conf), "-e", "stderr"]


@contextlib.contextmanager
def nginx_process(tmp: Path, conf: Path) -> Iterator[subprocess.Popen[bytes]]:
    """nginx running ``conf`` until the block ends (then stopped gracefully, by pid)."""
    proc = subprocess.Popen(
        nginx_argv(tmp, conf),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        seen = []
        for line in proc.stderr:  # "start worker process" once it listens
            seen.append(line)
            if b"start worker process" in line:
                break
        else:
            raise RuntimeError(f"nginx did not start: {b''.join(seen).decode()}")
        drain = threading.Thread(target=proc.stderr.read, daemon=True)
        drain.start()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
