"""Open a local HTML file in headless Chromium over the DevTools protocol (aiohttp's
websocket client): collect console errors and exceptions, evaluate a script, screenshot.

Chromium prints its DevTools address on stderr once it listens; that line is awaited
(no polling). Only file:// pages are opened; nothing else is fetched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    """What a loaded page said: console errors, uncaught exceptions, failed loads."""

    errors: list[str] = field(default_factory=list)
    value: Any = None
    screenshot: bytes | None = None


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = msg.json()
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            else:
                self.events.put_nowait(data)

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        i = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        msg: dict[str, Any] = {"id": i, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_json(msg)
        reply = await fut
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})


@contextlib.asynccontextmanager
async def _browser(tmp: Path) -> AsyncIterator[str]:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        "--remote-debugging-port=0",
        f"--user-data-dir={tmp / 'profile'}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        while True:
            line = (await proc.stderr.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError("chromium exited before listening")
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                break
        drain = asyncio.create_task(proc.stderr.read())  # keep its pipe from filling
        yield m.group(1)
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def open_page(
    html: Path, script: str, *, width: int = 1300, height: int = 2400, screenshot: bool = False
) -> Page:
    """Load ``html``, run ``script`` (an expression; its value comes back as JSON)."""
    page = Page()
    async with (
        _browser(html.parent) as ws_url,
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url, max_msg_size=0) as ws,
    ):
        s = _Session(ws)
        target = (await s.call("Target.createTarget", url="about:blank"))["targetId"]
        sid = (await s.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            await s.call(domain, sid)
        await s.call(
            "Emulation.setDeviceMetricsOverride",
            sid,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await s.call("Page.navigate", sid, url=html.resolve().as_uri())
        while True:
            ev = await s.events.get()
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                page.errors.append(str(params.get("args")))
            elif method == "Runtime.exceptionThrown":
                page.errors.append(str(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                page.errors.append(str(params["entry"]))
            elif method == "Page.loadEventFired":
                break
        res = await s.call("Runtime.evaluate", sid, expression=script, returnByValue=True)
        page.value = res["result"].get("value")
        if screenshot:
            shot = await s.call("Page.captureScreenshot", sid, format="png")
            page.screenshot = base64.b64decode(shot["data"])
        # Events that came with the load (an error in a deferred script) are counted too.
        while not s.events.empty():
            ev = s.events.get_nowait()
            if ev.get("method") in ("Runtime.exceptionThrown",):
                page.errors.append(str(ev.get("params")))
        s.reader.cancel()
    return page
