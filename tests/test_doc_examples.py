"""Every example in README.md and docs/*.md runs as written.

Each page's ``bash`` and ``python`` blocks run in order, as a reader pasting them would,
in a scratch directory that looks like a checkout after the quick start (``.venv``,
``prompts/``, ``examples/``, ``config.toml``), inside a private network namespace
(``unshare -n``): only loopback, so the fixed ports the examples use are free and nothing
reaches the internet. Blocks that name a hosted provider (``-p openai``) run against the
built-in mock, through ``LLMBATCH_BASE_URL``; the local profiles' default ports are
served by mocks (tests/doc_mocks.py) unless the page starts its own server there.

A block that cannot run here is marked just above it with ``<!-- not-run: REASON -->``,
REASON one of ``NOT_RUN`` whose check holds for the block; ``<!-- exit: N -->`` marks a
block that ends with exit code N on purpose. ``toml`` blocks must load as config files.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmbatch.config.load import load_profiles
from llmbatch.config.profiles import BUILTIN_PROVIDERS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = ("bash", "python")
OTHER_LANGS = ("text", "toml", "json", "jsonl")

# Why a block may stay unrun, and what in the block shows that it is so.
NOT_RUN: dict[str, Callable[[str], bool]] = {
    "installs packages": lambda text: "pip install" in text,
    "runs the whole test suite": lambda text: ".ci/run" in text,
    "serves until stopped": lambda text: bool(
        re.search(r"(mkdocs serve|mock-server|uvicorn)[^&\n]*$", text, re.M)
    ),
    "starts a Ray cluster": lambda text: "--engine ray" in text,
    # A hosted provider the mock cannot stand in for (its prices follow the real endpoint).
    "needs OPENAI_API_KEY": lambda text: "OPENAI_API_KEY" in text,
    "needs remote servers": lambda text: bool(
        re.search(r"https?://(?!127\.0\.0\.1|localhost|\[::1\])", text)
    ),
}
# Hosted profiles run against the mock at this address; local ones at their own ports.
HOSTED_MOCK_PORT = 18000
LOCAL_PORTS = {
    name: int(m.group(1))
    for name, p in BUILTIN_PROVIDERS.items()
    if (m := re.fullmatch(r"http://127\.0\.0\.1:(\d+)/v1", p.base_url))
}
HOSTED = {name for name, p in BUILTIN_PROVIDERS.items() if p.api_key_env}
PROVIDER_FLAG = re.compile(r"(?:-p|--provider)[ =]([\w-]+)")
# A server a block starts itself (not a comment saying how to start the real one).
SERVER_PORT = re.compile(r"^[^#\n]*(?:mock-server|uvicorn)[^#\n]*--port (\d+)", re.M)
MARKER = re.compile(r"<!-- (not-run|exit): (.+?) -->")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: tuple[str, str] | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS and (self.marker is None or self.marker[0] == "exit")

    @property
    def exit_code(self) -> int:
        return int(self.marker[1]) if self.marker and self.marker[0] == "exit" else 0

    @property
    def providers(self) -> set[str]:
        return set(PROVIDER_FLAG.findall(self.text))


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks (opening fences at the start of a line)."""
    lines = page.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.fullmatch(r"```(\S*)\s*", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.fullmatch(before.strip())
        text = "\n".join(lines[i + 1 : end]) + "\n"
        out.append(Block(page, i + 1, m.group(1), text, (mark[1], mark[2]) if mark else None))
        i = end + 1
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]


def test_every_block_is_run_or_says_why_not() -> None:
    for b in ALL_BLOCKS:
        assert b.lang in RUN_LANGS + OTHER_LANGS, (
            f"{b.where}: a ```{b.lang or '(no language)'} block; use ```bash or ```python "
            f"(run by this test) or one of {', '.join(OTHER_LANGS)}"
        )
        if b.marker is None:
            continue
        kind, reason = b.marker
        if kind == "exit":
            assert reason.isdigit() and b.lang == "bash", b.where
            continue
        known = next((r for r in NOT_RUN if reason == r or reason.startswith(r + " (")), None)
        assert known is not None, f"{b.where}: unknown not-run reason {reason!r}"
        assert NOT_RUN[known](b.text), f"{b.where}: not-run ({known}) but the block does not"


def test_python_examples_use_a_provider_that_runs_here() -> None:
    for b in ALL_BLOCKS:
        if b.lang == "python" and b.runs:
            named = set(re.findall(r"""(?:Client\(|provider=)["']([\w-]+)["']""", b.text))
            assert named and not named & HOSTED, f"{b.where}: use 'mock' or a local profile"


@pytest.mark.parametrize(
    "block", [b for b in ALL_BLOCKS if b.lang == "toml"], ids=lambda b: b.where
)
def test_toml_examples_load(block: Block, tmp_path: Path) -> None:
    text = block.text
    if snippet := re.fullmatch(r'--8<-- "(.+)"\n', text):
        text = (ROOT / snippet[1]).read_text()
    (tmp_path / "c.toml").write_text(text)
    load_profiles(tmp_path / "c.toml")  # ConfigError if anything is off


def page_script(page: Path, work: Path) -> tuple[str, list[Block]]:
    """The bash script that runs ``page``'s blocks in ``work``, and those blocks."""
    runnable = [b for b in blocks(page) if b.runs]
    own_ports = {int(p) for b in runnable for p in SERVER_PORT.findall(b.text)}
    used = set().union(*(b.providers for b in runnable)) if runnable else set()
    ports = sorted({LOCAL_PORTS[p] for p in used if p in LOCAL_PORTS} - own_ports)
    if used & HOSTED:
        ports.append(HOSTED_MOCK_PORT)
    lines = ["set -u", "ip link set lo up", f"cd {work}"]
    if ports:
        ready = work / ".mocks-ready"
        lines += [
            f"{sys.executable} {ROOT / 'tests' / 'doc_mocks.py'} {ready} "
            + " ".join(map(str, ports))
            + " &",
            f"for _ in $(seq 300); do [ -e {ready} ] && break; sleep 0.05; done",
            f"rm {ready}",
        ]
    for n, b in enumerate(runnable):
        body = b.text
        if b.lang == "python":
            (work / f"_example_{n}.py").write_text(b.text)
            body = f".venv/bin/python _example_{n}.py\n"
        env = ""
        if b.providers & HOSTED:
            env = f"export LLMBATCH_BASE_URL=http://127.0.0.1:{HOSTED_MOCK_PORT}/v1\n"
        lines += [
            f"echo '@@ block {n}: {b.where}'",
            f"( set -e -o pipefail\n{env}{body})",
            "rc=$?",
            f'if [ $rc -ne {b.exit_code} ]; then echo "@@ {b.where}: exit $rc, '
            f'expected {b.exit_code}"; exit 97; fi',
        ]
    return "\n".join(lines) + "\n", runnable


def scratch_checkout(work: Path) -> None:
    """What a reader's checkout holds after the quick start (the venv is this one)."""
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))
    for name in ("prompts", "examples", "config.toml"):
        (work / name).symlink_to(ROOT / name)


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if any(b.runs for b in blocks(p))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
@pytest.mark.subprocess
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    assert shutil.which("unshare") and shutil.which("curl"), "needs unshare (util-linux), curl"
    work = tmp_path / "checkout"
    scratch_checkout(work)
    script, runnable = page_script(page, work)
    (tmp_path / "page.sh").write_text(script)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLMBATCH_") and not k.endswith("_API_KEY")
    }
    env["COLUMNS"] = "120"
    log = tmp_path / "page.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["unshare", "-n", "bash", str(tmp_path / "page.sh")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: background servers end with it
        )
        try:
            rc = proc.wait(timeout=120)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    text = log.read_text(errors="replace")
    assert rc == 0, f"{page.name}: an example failed:\n" + "\n".join(text.splitlines()[-60:])
    assert text.count("@@ block ") == len(runnable)
