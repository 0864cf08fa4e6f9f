"""The action table and the closed grammar of command files (wirt_wrapper.rules.actions).

Pure functions, no users needed.  The libvirt effect of every row is checked
on libvirt's test driver (a private host file per test, so no state leaks).
"""

from __future__ import annotations

import string
from datetime import UTC, datetime
from pathlib import Path

import libvirt
import pytest
from conftest import REPO
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wirt_wrapper.rules.actions import (
    ACTIONS,
    SNAPSHOT_NAME,
    Rejection,
    SnapshotCall,
    asked,
    canonical,
    lookup_action,
    parse_command,
    parse_params,
    settled,
    with_defaults,
)

LIMIT = 4096
ALL_NAMES = sorted(n for a in ACTIONS for n in (a.name, *a.aliases))


def parse(name: str, content: str | bytes) -> list[str]:
    data = content.encode() if isinstance(content, str) else content
    return parse_command(name, data, LIMIT).tokens()


def rejected(name: str, content: str | bytes) -> str:
    data = content.encode() if isinstance(content, str) else content
    with pytest.raises(Rejection) as info:
        parse_command(name, data, LIMIT)
    return str(info.value)


class TestTable:
    """The table is the one described in SPEC section 3, row for row."""

    def test_rows(self) -> None:
        rows = {a.name: (a.aliases, tuple((o.name, o.values) for o in a.options))
                for a in ACTIONS}
        assert rows == {
            "start": ((), (("--paused", ()), ("--force-boot", ()))),
            "shutdown": (("stop",), (("--mode", ("acpi", "agent")),)),
            "destroy": (("kill",), (("--graceful", ()),)),
            "reboot": ((), (("--mode", ("acpi", "agent")),)),
            "reset": ((), ()),
            "suspend": ((), ()),
            "resume": ((), ()),
            "autostart": ((), (("--disable", ()),)),
            "status": ((), ()),
            "snapshot": ((), (("--name", ()),)),
            "revert": ((), (("--name", ()),)),
            "snapshot-delete": ((), (("--name", ()),)),
            "console": ((), (("--minutes", ("5", "15", "60", "240")),)),
            "screenshot": ((), ()),
            "serial": ((), ()),
        }

    def test_every_option_says_what_it_does(self) -> None:
        for action in ACTIONS:
            for option in action.options:
                assert len(option.help) > 20, (action.name, option.name)

    def test_readme_table_is_this_table(self) -> None:
        """README's action table: each row's name, aliases, every option with its help
        text, and the summary, exactly as in ACTIONS (issue 15 item 9)."""
        readme = (REPO / "README.md").read_text()
        start = readme.index("| file name | aliases | parameters")
        lines = readme[start:readme.index("\n\n", start)].splitlines()[2:]
        found = []
        for line in lines:
            name, aliases, params, what = (c.strip() for c in line.strip("|").split(" | "))
            options = []
            for text in ([] if params == "none" else params.split("<br>")):
                form, _, help_text = text.partition(": ")
                words = [w.split() for w in form.strip("`").split("` or `")]
                options.append((words[0][0], tuple(w[1] for w in words if len(w) > 1),
                                help_text))
            found.append((name.strip("`"), tuple(a.strip("`") for a in aliases.split(", ")
                                                 if a), tuple(options), what))
        assert found == [(a.name, a.aliases, tuple(
            (o.name, o.values or ((o.value.what,) if o.value else ()), o.help)
            for o in a.options), a.summary) for a in ACTIONS]

    @pytest.mark.parametrize("alias,name", [("stop", "shutdown"), ("kill", "destroy")])
    def test_alias(self, alias: str, name: str) -> None:
        assert lookup_action(alias).name == name
        assert parse_command(alias, b"", LIMIT).action.name == name

    @pytest.mark.parametrize("name", ["config", "Start", "START", "start ", " start", "start.",
                                      "start\n", "virsh", "define", "undefine", "migrate",
                                      "vncviewer", "", ".", "..", "stаrt", "ｓｔａｒｔ"])
    def test_unknown_action_names_the_file(self, name: str) -> None:
        message = rejected(name, "")
        assert "is not an action" in message and "known:" in message
        shown = name.encode("ascii", "backslashreplace").decode().replace("\n", "\\x0a")
        assert f"'{shown}'" in message


ACCEPTED = [
    ("start", "", []),
    ("start", "--paused", ["--paused"]),
    ("start", "--force-boot", ["--force-boot"]),
    ("start", "--paused --force-boot", ["--force-boot", "--paused"]),
    ("start", "--force-boot\t --paused", ["--force-boot", "--paused"]),
    ("shutdown", "", []),
    ("shutdown", "--mode acpi", ["--mode", "acpi"]),
    ("shutdown", "--mode=acpi", ["--mode", "acpi"]),
    ("shutdown", "--mode agent", ["--mode", "agent"]),
    ("shutdown", "--mode=agent", ["--mode", "agent"]),
    ("stop", "--mode\tacpi", ["--mode", "acpi"]),
    ("destroy", "", []),
    ("destroy", "--graceful", ["--graceful"]),
    ("kill", "--graceful", ["--graceful"]),
    ("reboot", "", []),
    ("reboot", "--mode acpi", ["--mode", "acpi"]),
    ("reboot", "--mode=agent", ["--mode", "agent"]),
    ("reset", "", []),
    ("suspend", "", []),
    ("resume", "", []),
    ("autostart", "", []),
    ("autostart", "--disable", ["--disable"]),
    ("status", "", []),
    ("snapshot", "", []),
    ("snapshot", "--name before-upgrade", ["--name", "before-upgrade"]),
    ("snapshot", "--name=a", ["--name", "a"]),
    ("snapshot", "--name 0_v1.2-rc", ["--name", "0_v1.2-rc"]),
    ("snapshot", "--name " + "x" * 32, ["--name", "x" * 32]),
    ("revert", "--name snap-20261201-120000", ["--name", "snap-20261201-120000"]),
    ("snapshot-delete", "--name\tb", ["--name", "b"]),
]


class TestAsked:
    """`shutdown` and `reboot` only ask the guest: their done message says so (SPEC 3)."""

    def test_shutdown_of_a_guest_still_running(self) -> None:
        assert asked(lookup_action("shutdown"), "running") == \
            "asked the guest to power off; it is still running"

    def test_shutdown_of_a_guest_already_off(self) -> None:
        assert asked(lookup_action("stop"), "shut off") == \
            "asked the guest to power off; it is shut off"

    def test_reboot(self) -> None:
        assert asked(lookup_action("reboot"), "running") == \
            "asked the guest to reboot; it is running"

    def test_state_not_read_back(self) -> None:
        assert asked(lookup_action("shutdown"), None) == \
            "asked the guest to power off; its state could not be read back"

    def test_settled(self) -> None:
        """What `wirt shutdown|reboot --wait` waits for."""
        shutdown, reboot = lookup_action("shutdown"), lookup_action("reboot")
        assert settled(shutdown, "shut off", read_later=False)  # the read-back may show it
        assert not settled(shutdown, "running", read_later=True)
        assert not settled(shutdown, "paused", read_later=True)
        # running is also the state before the request: only a later pass's read counts
        assert not settled(reboot, "running", read_later=False)
        assert settled(reboot, "running", read_later=True)
        assert not settled(reboot, "shut off", read_later=True)
        assert not settled(lookup_action("destroy"), "shut off", read_later=True)
        assert (shutdown.forced_by, reboot.forced_by) == (("destroy", "forces it off"),
                                                           ("reset", "resets it hard"))

    def test_only_the_requests_ask(self) -> None:
        assert {a.name: (a.asks, a.settles_in) for a in ACTIONS if a.asks} == {
            "shutdown": ("power off", "shut off"), "reboot": ("reboot", "running")}


class TestAccepted:
    @pytest.mark.parametrize("name,content,tokens", ACCEPTED)
    @pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
    def test_every_form(self, name: str, content: str, tokens: list[str], ending: str) -> None:
        assert parse(name, content + ending) == tokens

    @pytest.mark.parametrize("name,content,tokens", ACCEPTED)
    def test_blanks_around(self, name: str, content: str, tokens: list[str]) -> None:
        assert parse(name, f"  \t{content} \t ") == tokens

    @pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"   ", b"\t\n"])
    def test_empty_file(self, content: bytes) -> None:
        for name in ALL_NAMES:
            if not any(o.required for o in lookup_action(name).options):
                assert parse(name, content) == []

    def test_exactly_at_the_limit(self) -> None:
        content = b"--disable" + b" " * (LIMIT - len(b"--disable"))
        assert parse("autostart", content) == ["--disable"]


# (action, content, token that must be named, words of the rule)
INJECTIONS = [
    ("start", "--domain bob-web", "--domain", "is not accepted by 'start'"),
    ("start", "--domain=bob-web", "--domain=bob-web", "is not accepted"),
    ("start", "bob-web", "bob-web", "is not accepted"),
    ("destroy", "--domain bob-web", "--domain", "is not accepted by 'destroy'"),
    ("start", "-c qemu+ssh://evil/system", "-c", "is not accepted"),
    ("start", "--connect qemu+ssh://evil/system", "--connect", "is not accepted"),
    ("start", "qemu:///system", "qemu:///system", "is not accepted"),
    ("autostart", "--file /etc/shadow", "--file", "is not accepted"),
    ("autostart", "/etc/shadow", "/etc/shadow", "is not accepted"),
    ("autostart", "--disable=/etc/shadow", "--disable=/etc/shadow", "takes no value"),
    ("autostart", "--disable=", "--disable=", "takes no value"),
    ("start", "--paused=yes", "--paused=yes", "takes no value"),
    ("autostart", "--disable --disable", "--disable", "given twice"),
    ("start", "--paused --paused", "--paused", "given twice"),
    ("shutdown", "--mode acpi --mode agent", "--mode", "given twice"),
    ("shutdown", "--mode=acpi --mode=acpi", "--mode", "given twice"),
    ("shutdown", "--mode", "--mode", "needs a value"),
    ("reboot", "--mode", "--mode", "needs a value"),
    ("shutdown", "--mode=", "", "is not a value of '--mode'"),
    ("shutdown", "--mode /etc/shadow", "/etc/shadow", "is not a value of '--mode'"),
    ("shutdown", "--mode=qemu:///system", "qemu:///system", "is not a value of '--mode'"),
    ("shutdown", "--mode acpi=1", "acpi=1", "is not a value of '--mode'"),
    ("shutdown", "--mode ACPI", "ACPI", "is not a value of '--mode'"),
    ("shutdown", "--mode --mode", "--mode", "is not a value of '--mode'"),
    ("shutdown", "--mode acpi extra", "extra", "is not accepted by 'shutdown'"),
    ("shutdown", "--mode==acpi", "=acpi", "is not a value"),
    ("shutdown", "--mode acpi,agent", "acpi,agent", "is not a value"),
    ("shutdown", "--paused", "--paused", "is not accepted by 'shutdown'"),
    ("reset", "--graceful", "--graceful", "takes no parameters"),
    ("status", "--all", "--all", "takes no parameters"),
    ("suspend", "now", "now", "takes no parameters"),
    ("resume", "--", "--", "takes no parameters"),
    ("start", "-", "-", "is not accepted"),
    ("start", "-p", "-p", "is not accepted"),
    ("start", "---paused", "---paused", "is not accepted"),
    ("start", "--PAUSED", "--PAUSED", "is not accepted"),
    ("start", "--paused;reboot", "--paused;reboot", "is not accepted"),
    ("start", "--paused`id`", "--paused`id`", "is not accepted"),
    ("start", "$(id)", "$(id)", "is not accepted"),
    ("start", "'--paused'", "'--paused'", "is not accepted"),
    ("start", '"--paused"', '"--paused"', "is not accepted"),
    ("destroy", "--graceful --domain bob-web", "--domain", "is not accepted"),
    # SPEC 11: a snapshot's name is held to its pattern; never a path, a URI or a domain
    ("snapshot", "--name ../../etc/passwd", "../../etc/passwd", "a snapshot name"),
    ("snapshot", "--name /etc/shadow", "/etc/shadow", "is not a valid value of '--name'"),
    ("snapshot", "--name qemu:///system", "qemu:///system", "a snapshot name"),
    ("snapshot", "--name=-x", "-x", "starts with a letter or digit"),
    ("snapshot", "--name .hidden", ".hidden", "starts with a letter or digit"),
    ("snapshot", "--name " + "a" * 33, "a" * 33, "at most 32"),
    ("snapshot", "--name a$b", "a$b", "a snapshot name"),
    ("snapshot", "--name a b", "b", "is not accepted by 'snapshot'"),
    ("snapshot", "--name=", "", "a snapshot name"),
    ("snapshot", "--name", "--name", "needs a value"),
    ("snapshot", "--name a --name b", "--name", "given twice"),
    ("snapshot", "--domain bob-web", "--domain", "is not accepted by 'snapshot'"),
    ("revert", "", "revert", "needs '--name NAME'"),
    ("revert", "--name bob-web/x", "bob-web/x", "a snapshot name"),
    ("snapshot-delete", "", "snapshot-delete", "needs '--name NAME'"),
    ("snapshot-delete", "--name *", "*", "a snapshot name"),
]


class TestRejected:
    @pytest.mark.parametrize("name,content,token,rule", INJECTIONS)
    def test_injection(self, name: str, content: str, token: str, rule: str) -> None:
        message = rejected(name, content)
        assert f"'{token}'" in message, message
        assert rule in message, message

    @pytest.mark.parametrize("name", ["start.txt", "Start", "strat"])
    def test_a_near_miss_is_named(self, name: str) -> None:
        """issue 15.9: the rejection says which action was probably meant."""
        assert "did you mean 'start'?" in rejected(name, "")

    def test_usage_is_listed(self) -> None:
        message = rejected("shutdown", "--domain bob-web")
        assert "accepted: --mode acpi|agent" in message

    @pytest.mark.parametrize("content", [b"--paused\n--force-boot", b"\n--paused",
                                         b"--paused\r--force-boot", b"\r\n--paused",
                                         b"--paused\n\n--force-boot"])
    def test_more_than_one_line(self, content: bytes) -> None:
        assert "more than one line" in rejected("start", content)

    @pytest.mark.parametrize("content", [b"--paused\n\n", b"--paused\r\n\r\n",
                                         b"--paused\n\r\n", b"--paused \n\t\n\n",
                                         b"\r\n\r\n"])
    def test_trailing_blank_lines_are_fine(self, content: bytes) -> None:
        """SPEC 3 (issue 15.9): an editor's extra empty lines at the end change nothing."""
        assert parse("start", content) == ([] if content.startswith(b"\r") else ["--paused"])

    @pytest.mark.parametrize("content,byte,position", [
        ("--pausé".encode(), 0xC3, 6),
        ("—paused".encode(), 0xE2, 0),
        (b"--paused\x0b", 0x0B, 8),
        (b"--paused\x0c", 0x0C, 8),
        (b"\x1b[31m", 0x1B, 0),
        (b"--paused\x7f", 0x7F, 8),
        (b"\xff\xfe", 0xFF, 0),
        ("--mode аcpi".encode(), 0xD0, 7),  # Cyrillic a
    ])
    def test_non_ascii(self, content: bytes, byte: int, position: int) -> None:
        message = rejected("shutdown", content)
        assert f"byte 0x{byte:02x} at position {position}" in message
        assert "not printable ASCII" in message

    @pytest.mark.parametrize("content,position", [
        (b"\0", 0), (b"--paused\0", 8), (b"--paused\0--force-boot", 8), (b"\0\n", 0),
    ])
    def test_nul_byte(self, content: bytes, position: int) -> None:
        assert f"a NUL byte at position {position}" in rejected("start", content)

    @pytest.mark.parametrize("size", [LIMIT + 1, LIMIT * 4])
    def test_oversize(self, size: int) -> None:
        message = rejected("autostart", b" " * size)
        assert f"more than {LIMIT} bytes" in message and "limit" in message

    def test_oversize_counts_the_newline(self) -> None:
        assert "more than 8 bytes" in str(
            pytest.raises(Rejection, parse_command, "autostart", b"--disable\n", 8).value
        )

    def test_long_token_is_shortened_in_the_message(self) -> None:
        message = rejected("start", "--" + "x" * 500)
        assert "..." in message and len(message) < 300

    def test_control_bytes_never_reach_the_message(self) -> None:
        action = lookup_action("start")
        with pytest.raises(Rejection) as info:
            parse_params(action, ["--x\x1b[2J\n\0"])
        text = str(info.value)
        assert all(0x20 <= ord(c) < 0x7F for c in text), text
        assert "\\x1b" in text and "\\x0a" in text and "\\x00" in text


class TestSnapshotNames:
    """SPEC 11: one kind of value, a name held to a pattern, said only in the table."""

    def test_the_pattern(self) -> None:
        assert SNAPSHOT_NAME.pattern.pattern == r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}"
        for name in ("snapshot", "revert", "snapshot-delete"):
            action = lookup_action(name)
            assert isinstance(action.call, SnapshotCall)
            assert [o.value for o in action.options] == [SNAPSHOT_NAME]

    def test_only_snapshot_has_a_default(self) -> None:
        """Root fills the default once, in UTC: snap-YYYYmmdd-HHMMSS."""
        when = datetime(2026, 12, 1, 9, 5, 7, tzinfo=UTC)
        assert with_defaults(lookup_action("snapshot"), {}, when) == {
            "--name": "snap-20261201-090507"}
        assert SNAPSHOT_NAME.pattern.fullmatch("snap-20261201-090507")
        assert with_defaults(lookup_action("snapshot"), {"--name": "mine"}, when) == {
            "--name": "mine"}
        assert with_defaults(lookup_action("revert"), {"--name": "a"}, when) == {"--name": "a"}
        assert with_defaults(lookup_action("start"), {}, when) == {}

    def test_usage_names_the_value(self) -> None:
        assert "accepted: --name NAME (optional)" in rejected("snapshot", "--x")
        assert "accepted: --name NAME)" in rejected("revert", "--x")


class TestPrivilegedSide:
    """Root re-validates token lists it gets from the user side with parse_params."""

    @pytest.mark.parametrize("tokens", [
        ["--domain", "bob-web"], ["--paused", "x"], ["--paused", "--paused"], [""],
        ["--mode"], ["--paused\n"], ["--paused "], [" --paused"], ["--pau\0sed"],
    ])
    def test_forged_tokens_are_rejected(self, tokens: list[str]) -> None:
        with pytest.raises(Rejection):
            parse_params(lookup_action("start"), tokens)

    @pytest.mark.parametrize("name,content,tokens", ACCEPTED)
    def test_canonical_tokens_revalidate(self, name: str, content: str,
                                         tokens: list[str]) -> None:
        action = lookup_action(name)
        assert canonical(parse_params(action, tokens)) == tokens


@pytest.fixture
def test_conn(tmp_path: Path) -> libvirt.virConnect:
    """A private test-driver host with one running domain 'vm'."""
    host = tmp_path / "host.xml"
    host.write_text("<node><domain type='test'><name>vm</name><memory>65536</memory>"
                    "<vcpu>1</vcpu><os><type>hvm</type></os></domain></node>")
    conn = libvirt.open(f"test://{host}")
    yield conn
    conn.close()


def run(conn: libvirt.virConnect, name: str, content: str = "") -> libvirt.virDomain:
    command = parse_command(name, content.encode(), LIMIT)
    dom = conn.lookupByName("vm")
    if command.action.call is not None:
        command.action.call.invoke(dom, parse_params(command.action, command.tokens()), libvirt)
    return dom


class TestLibvirtEffect:
    """Each row's call does what the table says, on libvirt's test driver."""

    def test_destroy_then_start(self, test_conn: libvirt.virConnect) -> None:
        assert run(test_conn, "destroy").state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        assert run(test_conn, "start").state()[0] == libvirt.VIR_DOMAIN_RUNNING

    def test_start_flags_reach_libvirt(self, test_conn: libvirt.virConnect) -> None:
        # the test driver refuses every start flag, naming it: proof that it was passed
        run(test_conn, "kill", "--graceful")
        for content, flag in (("--paused", libvirt.VIR_DOMAIN_START_PAUSED),
                              ("--force-boot", libvirt.VIR_DOMAIN_START_FORCE_BOOT)):
            with pytest.raises(libvirt.libvirtError, match=f"unsupported flags \\({flag:#x}\\)"):
                run(test_conn, "start", content)

    def test_suspend_resume(self, test_conn: libvirt.virConnect) -> None:
        assert run(test_conn, "suspend").state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert run(test_conn, "resume").state()[0] == libvirt.VIR_DOMAIN_RUNNING

    @pytest.mark.parametrize("name", ["shutdown", "stop"])
    def test_shutdown(self, test_conn: libvirt.virConnect, name: str) -> None:
        assert run(test_conn, name).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF

    def test_reboot_keeps_running(self, test_conn: libvirt.virConnect) -> None:
        assert run(test_conn, "reboot").state()[0] == libvirt.VIR_DOMAIN_RUNNING

    def test_autostart(self, test_conn: libvirt.virConnect) -> None:
        assert run(test_conn, "autostart").autostart() == 1
        assert run(test_conn, "autostart", "--disable").autostart() == 0

    def test_status_has_no_effect(self, test_conn: libvirt.virConnect) -> None:
        assert lookup_action("status").call is None
        assert run(test_conn, "status").state()[0] == libvirt.VIR_DOMAIN_RUNNING

    def test_shutdown_on_a_stopped_domain_fails_in_libvirt(
            self, test_conn: libvirt.virConnect) -> None:
        run(test_conn, "destroy")
        with pytest.raises(libvirt.libvirtError):
            run(test_conn, "shutdown", "--mode acpi")


# -- fuzzing ---------------------------------------------------------------

WORDS = sorted({o.name for a in ACTIONS for o in a.options}
               | {v for a in ACTIONS for o in a.options for v in o.values})
JUNK = ["--domain", "bob-web", "-c", "qemu+ssh://h/system", "/etc/shadow", "=", "--", "-",
        "--mode=", "--mode=acpi", "--mode=agent", "--disable=", "acpi=agent", "x:y", "..", "/"]
tokens = st.lists(st.sampled_from(WORDS + JUNK) | st.text(string.printable, max_size=12),
                  max_size=6)
separators = st.sampled_from([" ", "\t", "  ", " \t "])
endings = st.sampled_from(["", "\n", "\r\n", "\n\n", "\r", " "])


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    words = draw(tokens)
    text = draw(separators).join(words) + draw(endings)
    return text.encode("utf-8", "surrogateescape")


names = st.sampled_from(ALL_NAMES) | st.text(max_size=12)
ALLOWED_TOKENS = set(WORDS)


class TestFuzz:
    @settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(name=names, content=contents() | st.binary(max_size=64))
    @example(name="shutdown", content=b"--mode=acpi")
    @example(name="start", content=b"--paused --force-boot\r\n")
    def test_parse_command(self, name: str, content: bytes) -> None:
        try:
            command = parse_command(name, content, 64)
        except Rejection as exc:
            text = str(exc)
            assert text and all(0x20 <= ord(c) < 0x7F for c in text), text
            return
        assert name in ALL_NAMES
        canon = command.tokens()
        # re-parses to the same canonical tokens, from the text and from the list
        again = parse_command(name, " ".join(canon).encode(), 64)
        assert again.action == command.action and again.tokens() == canon
        assert canonical(parse_params(command.action, canon)) == canon
        for index, token in enumerate(canon):
            named = index > 0 and canon[index - 1] == "--name"  # a snapshot's name
            assert token in ALLOWED_TOKENS or (named and SNAPSHOT_NAME.pattern.fullmatch(token))
            assert not set(token) & set("/:=") and not token.isspace()

    @settings(max_examples=500, deadline=None)
    @given(name=st.sampled_from(ALL_NAMES), words=st.lists(st.text(max_size=10), max_size=5))
    def test_parse_params_on_forged_lists(self, name: str, words: list[str]) -> None:
        action = lookup_action(name)
        try:
            params = parse_params(action, words)
        except Rejection:
            return
        assert canonical(parse_params(action, canonical(params))) == canonical(params)
        assert set(params) <= {o.name for o in action.options}
