"""The manual pages (deploy/man) say what the programs take: every option, command,
config key and exit status, no more and no less, checked against the parsers and
the config definition themselves (so a page cannot fall behind ``--help``)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from dataclasses import fields, is_dataclass

import pytest
from conftest import REPO

from wirt_wrapper.cli.main import build_parser as wirt_parser
from wirt_wrapper.root.admin import build_parser as admin_parser
from wirt_wrapper.root.auditquery import build_parser as audit_parser
from wirt_wrapper.root.auditquery import exit_table
from wirt_wrapper.root.main import build_parser as pass_parser
from wirt_wrapper.rules.config import Config, HostConfig
from wirt_wrapper.rules.errors import CLI_EXITS

MAN = REPO / "deploy/man"
PAGES = ["wirt.1", "wirt.toml.5", "virsh_wrapper.8", "wirt-audit.8"]


def page(name: str) -> str:
    """The page's source with roff's escaped hyphens made plain and font changes left out."""
    return re.sub(r"\\f[BIRP]", "", (MAN / name).read_text()).replace("\\-", "-")


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """*parser* and every subcommand's parser under it, each once."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += parsers(sub)
    return found


def commands(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(command names, aliases) of *parser*'s subcommands."""
    names: set[str] = set()
    aliases: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                (aliases if id(sub) in seen else names).add(name)
                seen.add(id(sub))
    return names, aliases


def long_options(*tops: argparse.ArgumentParser) -> set[str]:
    return {option for top in tops for p in parsers(top) for action in p._actions
            for option in action.option_strings if option.startswith("--")} - {"--help"}


def options_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def section(text: str, title: str) -> str:
    match = re.search(rf"^\.SH {re.escape(title)}\n(.*?)(?=^\.SH |\Z)", text, re.M | re.S)
    assert match, f"no section {title}"
    return match.group(1)


@pytest.mark.parametrize(("name", "parser"), [("virsh_wrapper.8", pass_parser),
                                             ("wirt-audit.8", audit_parser)])
def test_root_pages_name_every_option(name: str, parser: type) -> None:
    assert options_in(page(name)) == long_options(parser())


def test_wirt_page_names_every_option_and_command() -> None:
    text = page("wirt.1")
    assert options_in(text) == long_options(wirt_parser(), admin_parser())
    names, aliases = commands(wirt_parser())
    listed = set(re.findall(r"^\.TP\n\.B[IR]? \"?wirt ([a-z-]+)", section(text, "COMMANDS"),
                            re.M))
    assert listed == names - {"admin"}
    verbs, _ = commands(admin_parser())
    listed = set(re.findall(r"^\.TP\n\.B[IR]? \"?wirt admin ([a-z-]+)",
                            section(text, "ADMIN COMMANDS"), re.M))
    assert listed == verbs
    for alias in aliases:  # "(alias stop)"
        assert re.search(rf"alias\n\.BR? {alias}\b", text), alias


@pytest.mark.parametrize(("name", "table"), [
    ("wirt.1", ", ".join(f"{code} {kind}" for code, kind in CLI_EXITS)),
    ("wirt-audit.8", exit_table())])
def test_pages_list_the_exit_statuses_of_the_table(name: str, table: str) -> None:
    codes = set(re.findall(r"\b(\d+) [a-z]", table))
    listed = set(re.findall(r"^\.TP\n\.B (\d+)$", section(page(name), "EXIT STATUS"), re.M))
    assert codes and listed == codes


def test_config_page_names_every_key() -> None:
    text = page("wirt.toml.5")
    defaults = Config()
    expected = set()
    for field in fields(Config):
        value = getattr(defaults, field.name)
        if field.name == "path":
            continue
        table = "pass" if field.name == "passes" else field.name  # 'pass' is a keyword
        if field.name == "hosts":  # an array of tables: its section is [[hosts]]
            expected |= {f"hosts.{sub.name}" for sub in fields(HostConfig)}
        elif is_dataclass(value):
            expected |= {f"{table}.{sub.name}" for sub in fields(value)}
        else:
            expected.add(field.name)
    listed = set()
    for title, body in re.findall(r"^\.SH ([^\n]+)\n(.*?)(?=^\.SH |\Z)", text, re.M | re.S):
        table = title.strip("[]") + "." if title.startswith("[") else ""
        if title.startswith("[") or title == "TOP-LEVEL KEYS":
            listed |= {table + key for key in re.findall(r"^\.TP\n\.B (\w+)$", body, re.M)}
    assert listed == expected


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
@pytest.mark.parametrize("name", PAGES)
def test_pages_render_without_warnings(name: str) -> None:
    proc = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN / name)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
