"""README and docs/ say what the code does: every option, every profile, the log line."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path

import pytest
import typer.main

from llmbatch.cli.app import app
from llmbatch.config.options import options_in
from llmbatch.config.profiles import BUILTIN_PROVIDERS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    nxt = re.compile(rf"^#{{1,{level}}} ", re.M).search(text, start + len(heading) + 1)
    return text[start : nxt.start() if nxt else len(text)]


def commands() -> dict[str, list[str]]:
    """Each command of the CLI with the names of its options (help left out)."""
    group = typer.main.get_command(app)
    ctx = typer.Context(group)  # type: ignore[arg-type]
    out: dict[str, list[str]] = {}
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        cmd = group.get_command(ctx, name)  # type: ignore[attr-defined]
        out[name] = [
            opt
            for p in cmd.params
            if p.param_type_name == "option"
            for opt in (*p.opts, *p.secondary_opts)
            if opt not in ("--help", "-h")
        ]
    return out


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_option_is_in_the_command_line_reference(command: str) -> None:
    text = section((DOCS / "cli.md").read_text(), f"## `llmbatch {command}`")
    missing = [
        opt for opt in commands()[command] if not re.search(rf"`{re.escape(opt)}[ `=|]", text)
    ]
    assert not missing, f"document {missing} under `llmbatch {command}` in docs/cli.md"


def test_every_environment_variable_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    for opt in options_in("config"):
        assert f"`{opt.env}`" in text, f"document {opt.env} in docs/configuration.md"


def test_builtin_profiles_are_those_documented() -> None:
    text = (DOCS / "providers.md").read_text()
    listed = re.search(r"^Built-in profiles: (.*)\.$", text, re.M)
    assert listed is not None
    assert re.findall(r"`([a-z]+)`", listed.group(1)) == list(BUILTIN_PROVIDERS)
    rows = re.findall(
        r"^\| `([a-z]+)`[^|]*\| `([a-z-]+)` \| ([^|]+) \| [^|]+ \| ([^|]+) \|$", text, re.M
    )
    assert [r[0] for r in rows] == list(BUILTIN_PROVIDERS)
    for name, kind, url, key in rows:
        p = BUILTIN_PROVIDERS[name]
        assert kind == p.kind
        if not p.embedded_mock:
            assert url.strip() == f"`{p.base_url}`", name
        assert key.strip() == (f"`{p.api_key_env}`" if p.api_key_env else "none"), name
    # README names only built-in profiles as built in.
    readme = README.read_text()
    also = re.search(r"Also built in: (.*?) \(", readme, re.S)
    assert also is not None
    assert set(re.findall(r"`([a-z]+)`", also.group(1))) <= set(BUILTIN_PROVIDERS)


@pytest.mark.parametrize("page", [README, DOCS / "operations.md"])
def test_the_cron_log_sample_is_what_the_tool_prints(
    page: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmbatch.engine.stream import LiveCounts
    from llmbatch.progress import ProgressView

    sample = next(line for line in page.read_text().splitlines() if line.startswith("[llmbatch]"))
    m = re.fullmatch(
        r"\[llmbatch\] \S+ +([\d.]+)s done (\d+)/(\d+)  0 tok/s  in flight (\d+)  errors (\d+)"
        r"  failed attempts (\d+) \(last (\w+)\), retrying (\d+)",
        sample,
    )
    assert m, f"{page.name}: {sample}"
    live = LiveCounts()
    live.in_flight, live.failed_attempts, live.last_error, live.retrying = (
        int(m[4]),
        int(m[6]),
        m[7],
        int(m[8]),
    )
    done, errors = int(m[2]), int(m[5])
    view = ProgressView(int(m[3]), lambda: (done, errors, 0), live, interactive=False, every_s=10)
    view._t0 = time.monotonic() - float(m[1])  # the sample's elapsed time
    view.render()
    printed = capsys.readouterr().err.strip()
    stamp = re.compile(r"^\[llmbatch\] \S+ +[\d.]+s")
    assert stamp.sub("", printed) == stamp.sub("", sample)


def test_readme_is_short_and_in_the_newcomers_order() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    headings = re.findall(r"^## (.*)$", text, re.M)
    assert headings == [
        "Two commands",
        "OpenAI, Anthropic and other hosted APIs",
        "A local vLLM or llama.cpp server",
        "Resume",
        "Rate limits",
        "Python API",
        "Compare providers, clients and concurrency",
        "Cron",
        "Documentation",
    ]
    # The test command's block is exactly what CI runs, and says what it installs.
    assert "```bash\nbash .ci/run\n```" in text
    assert "pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_every_docs_page_is_in_the_nav() -> None:
    """mkdocs --strict says so too; this names the page at test time."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted(DOCS.glob("*.md")):
        assert f": {page.name}\n" in nav, f"add {page.name} to the nav in mkdocs.yml"


def test_license_is_an_spdx_expression() -> None:
    """setuptools >= 77 reads license = "MIT"; the table form is deprecated (Feb 2027)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert "setuptools>=77" in meta["build-system"]["requires"]
