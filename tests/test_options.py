"""Each run option is declared once (config/options.py); the command line, config.toml, the
environment and ``llmbatch.Client`` all take it under the same name."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import llmbatch
from llmbatch.cli.app import app
from llmbatch.config.load import load_config
from llmbatch.config.options import RUN_OPTIONS, ClientKeywords, options_in

# A value of each type that is valid for every option of that type.
_SAMPLES = {
    "concurrency": "7",
    "client": "httpx",
    "text_layout": "log",
    "engine": "local",
    "api_key_env": "MY_KEY",
    "max_answer_bytes": "65536",
    "max_event_bytes": "65536",
}


def _sample(opt_name: str, typ: type, tmp_path: Path) -> str:
    if opt_name in _SAMPLES:
        return _SAMPLES[opt_name]
    if typ is Path:
        pem = tmp_path / "ca.pem"
        pem.write_text("")
        return str(pem)
    return {int: "3", float: "2.5", bool: "true", str: "http://127.0.0.1:9/v1"}[typ]


def test_the_run_command_has_exactly_the_cli_options() -> None:
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    names = {p.name for p in command.params} - {"prompts", "help"}
    assert names == {o.name for o in options_in("cli")}
    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    for opt in options_in("cli"):
        assert opt.long_flag in help_text


def test_client_keywords_are_the_client_options() -> None:
    hints = typing.get_type_hints(ClientKeywords)
    assert set(hints) == {o.name for o in options_in("client")}
    for opt in options_in("client"):
        # The keyword takes at least the option's own type.
        assert opt.type in typing.get_args(hints[opt.name]) or hints[opt.name] is opt.type


def test_an_unknown_client_keyword_is_refused() -> None:
    with pytest.raises(llmbatch.ConfigError, match="unknown Client option"):
        llmbatch.Client("mock", max_runtime_s=3)  # type: ignore[call-arg]


@pytest.mark.parametrize("opt", options_in("config"), ids=lambda o: o.name)
def test_config_file_and_environment_take_the_same_name(opt, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    value = _sample(opt.name, opt.type, tmp_path)
    if opt.name == "provider":
        value = "vllm"
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    from_env = load_config(empty, environ={opt.env: value})
    literal = f'"{value}"' if opt.type in (str, Path) else value
    conf = tmp_path / "c.toml"
    conf.write_text(f"[run]\n{opt.name} = {literal}\n")
    from_file = load_config(conf, environ={})
    assert from_env == from_file


def test_every_option_has_a_unique_flag_and_help() -> None:
    flags = [o.long_flag for o in RUN_OPTIONS]
    assert len(flags) == len(set(flags))
    assert all(o.help.endswith(".") or o.help.endswith(")") for o in RUN_OPTIONS)
