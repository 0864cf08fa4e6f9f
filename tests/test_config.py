"""Reading and validating the config (wirt_wrapper.rules.config, SPEC section 7 and 5.8).

Every key, every wrong type, and the ownership walk up to ``/``.  Runs as
root; "another owner" is uid 65534 (nobody), no user needs to exist.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import wirt_wrapper.rules.config as config_module
from wirt_wrapper.rules.config import (
    Config,
    QuotaConfig,
    SettingsConfig,
    check_root_owned,
    load_config,
    parse_config,
)
from wirt_wrapper.rules.errors import EXIT_CONFIG, ConfigError

NOBODY = 65534


def bad(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "/x.toml")
    assert info.value.exit_code == EXIT_CONFIG
    return str(info.value)


class TestKeys:
    def test_empty_is_the_defaults(self) -> None:
        assert parse_config({}, "/x.toml") == Config(path="/x.toml")

    def test_every_key(self) -> None:
        data = {
            "group": "vm", "uri": "test:///default", "layouts": ["wirt", "wirt"],
            "domain_name": "vm-{user}.{vm}", "pam_service": "", "audit_log": "/a/audit",
            "lock_file": "/a/lock", "state_dir": "/a/state",
            "limits": {"max_files_per_user": 5, "max_file_bytes": 10,
                       "seconds_per_user": 2, "libvirt_timeout": 1.5},
            "mail": {"enabled": False, "sendmail": "/bin/true", "admin": "ops"},
        }
        config = parse_config(data, "/x.toml")
        assert (config.group, config.uri, config.layouts) == ("vm", "test:///default", ("wirt",))
        assert config.domain_name == "vm-{user}.{vm}" and config.pam_service == ""
        assert (config.audit_log, config.lock_file, config.state_dir) == (
            "/a/audit", "/a/lock", "/a/state")
        assert config.limits.max_files_per_user == 5 and config.limits.max_file_bytes == 10
        assert config.limits.seconds_per_user == 2.0
        assert isinstance(config.limits.seconds_per_user, float)
        assert config.limits.libvirt_timeout == 1.5
        assert (config.mail.enabled, config.mail.sendmail, config.mail.admin) == (
            False, "/bin/true", "ops")

    @pytest.mark.parametrize("key,value", [
        ("group", 1), ("group", ""), ("group", ["vm"]), ("group", "vm\n"), ("group", True),
        ("uri", 3), ("uri", ""), ("uri", "qemu:///system\x00"),
        ("layouts", "wirt"), ("layouts", []), ("layouts", ["wirt", "bsd"]), ("layouts", [1]),
        ("domain_name", 5), ("domain_name", ""),
        ("pam_service", None), ("pam_service", 1),
        ("audit_log", "audit.log"), ("audit_log", ""), ("audit_log", 1),
        ("lock_file", "run/lock"), ("state_dir", "var/lib/wirt"), ("state_dir", ["/"]),
        ("audit_log", "/var/log/a\nb"),
    ])
    def test_wrong_value_names_the_key(self, key: str, value: Any) -> None:
        assert bad({key: value}).startswith(f"{key}:")

    @pytest.mark.parametrize("key,value", [
        ("max_files_per_user", 0), ("max_files_per_user", -1), ("max_files_per_user", 1.5),
        ("max_files_per_user", "100"), ("max_files_per_user", True),
        ("max_file_bytes", 0), ("max_file_bytes", 4096.0), ("max_file_bytes", False),
        ("seconds_per_user", 0), ("seconds_per_user", -0.5), ("seconds_per_user", "30"),
        ("seconds_per_user", float("nan")), ("seconds_per_user", float("inf")),
        ("libvirt_timeout", 0.0), ("libvirt_timeout", None), ("libvirt_timeout", float("nan")),
        ("libvirt_timeout", float("inf")),
    ])
    def test_limits(self, key: str, value: Any) -> None:
        message = bad({"limits": {key: value}})
        assert message.startswith(f"limits.{key}:") and "positive" in message

    @pytest.mark.parametrize("key,value", [
        ("enabled", "yes"), ("enabled", 1), ("sendmail", 1), ("admin", ["root"]),
        ("admin", "ro\not"),
    ])
    def test_mail(self, key: str, value: Any) -> None:
        assert bad({"mail": {key: value}}).startswith(f"mail.{key}:")

    def test_pass_interval(self) -> None:
        """[pass] interval_seconds: how often passes run; wirt status's 'stale' is 2x it."""
        assert Config().passes.interval_seconds == 120.0
        config = parse_config({"pass": {"interval_seconds": 60}}, "/x.toml")
        assert config.passes.interval_seconds == 60.0
        for value in (0, -5, "120", True, float("nan")):
            assert bad({"pass": {"interval_seconds": value}}).startswith(
                "pass.interval_seconds:")
        assert "unknown key" in bad({"pass": {"every": 2}})

    @pytest.mark.parametrize("key,value,rule", [
        ("full_pass_seconds", 0, "positive"), ("full_pass_seconds", 0.5, "at least 1"),
        ("full_pass_seconds", float("inf"), "positive"), ("full_pass_seconds", "120", "positive"),
        ("user_turns_per_second", 0, "positive"), ("user_turns_per_second", -1, "positive"),
        ("user_turns_per_second", 5000, "at most 1000"),
    ])
    def test_watch(self, key: str, value: Any, rule: str) -> None:
        message = bad({"watch": {key: value}})
        assert message.startswith(f"watch.{key}:") and rule in message, message

    def test_watch_values(self) -> None:
        config = parse_config({"watch": {"full_pass_seconds": 30, "user_turns_per_second": 0.5}},
                              "/x.toml")
        assert (config.watch.full_pass_seconds, config.watch.user_turns_per_second) == (30.0, 0.5)
        assert isinstance(config.watch.full_pass_seconds, float)
        assert Config().watch.full_pass_seconds == 120.0
        assert Config().watch.user_turns_per_second == 2.0

    @pytest.mark.parametrize("key", ["limits", "mail", "settings", "quota", "pass", "watch"])
    def test_table_must_be_a_table(self, key: str) -> None:
        assert bad({key: 5}).startswith(f"[{key}]")

    @pytest.mark.parametrize("data,name", [
        ({"groups": "vm"}, "groups"), ({"URI": "x"}, "URI"), ({"user": "x"}, "user"),
        ({"limits": {"max_files": 1}}, "limits.max_files"),
        ({"mail": {"to": "x"}}, "mail.to"),
        ({"settings": {"max_memory": 1}}, "settings.max_memory"),
        ({"settings": {"memory_mib": 1}}, "settings.memory_mib"),
        ({"quota": {"max_vcpus": 1}}, "quota.max_vcpus"),
        ({"quotas": {}}, "quotas"),
        ({"watch": {"rate": 1}}, "watch.rate"),
    ])
    def test_unknown_key(self, data: dict[str, Any], name: str) -> None:
        message = bad(data)
        assert message.startswith(f"{name}: unknown key") and "known:" in message


class TestTemplate:
    @pytest.mark.parametrize("template", [
        "{user}", "{vm}", "{user}{user}-{vm}", "{user}-{vm}-{vm}", "{user}-{name}",
        "{user}-{vm", "{user}-{vm}-{0}", "{user}-{vm!r}", "{user}-{vm:>9}", "{user}/{vm}",
        "{user.__class__}-{vm}", "{{user}}-{vm}", "web",
    ])
    def test_bad(self, template: str) -> None:
        assert bad({"domain_name": template}).startswith("domain_name:")

    @pytest.mark.parametrize("template", ["{user}-{vm}", "{vm}.{user}", "vm_{user}_{vm}"])
    def test_good(self, template: str) -> None:
        assert parse_config({"domain_name": template}, "/x").domain_name == template


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    folder = tmp_path / "etc"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    tmp_path.chmod(0o755)
    return folder


class TestFile:
    def test_good_file(self, etc: Path) -> None:
        path = write(etc / "wirt.toml", 'group = "g"\n[limits]\nmax_file_bytes = 10\n')
        config = load_config(str(path))
        assert config.group == "g" and config.limits.max_file_bytes == 10
        assert config.path == str(path)

    @pytest.mark.parametrize("text", ['group = "g', "group = g", "[limits\n", "= 1",
                                      'group = "a"\ngroup = "b"', "\x00", "limits = {a=}"])
    def test_malformed_toml(self, etc: Path, text: str) -> None:
        path = write(etc / "wirt.toml", text)
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(str(path))

    def test_not_utf8(self, etc: Path) -> None:
        path = etc / "wirt.toml"
        path.write_bytes(b'group = "\xff"\n')
        path.chmod(0o600)
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(str(path))

    def test_unknown_key_in_file(self, etc: Path) -> None:
        path = write(etc / "wirt.toml", "[limits]\nmax_file_byte = 1\n")
        with pytest.raises(ConfigError, match=r"^limits\.max_file_byte: unknown key"):
            load_config(str(path))

    def test_missing_explicit_file(self, etc: Path) -> None:
        with pytest.raises(ConfigError, match="cannot check"):
            load_config(str(etc / "nope.toml"))

    def test_folder_instead_of_file(self, etc: Path) -> None:
        (etc / "wirt.toml").mkdir(mode=0o755)
        with pytest.raises(ConfigError):
            load_config(str(etc / "wirt.toml"))

    @pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o660, 0o622])
    def test_writable_by_others(self, etc: Path, mode: int) -> None:
        path = write(etc / "wirt.toml", "", mode)
        with pytest.raises(ConfigError, match="writable by group or others"):
            load_config(str(path))

    @pytest.mark.parametrize("mode", [0o600, 0o644, 0o400, 0o640])
    def test_readable_modes_are_fine(self, etc: Path, mode: int) -> None:
        assert load_config(str(write(etc / "wirt.toml", "", mode))).group == "vmguests"

    def test_not_root_owned(self, etc: Path) -> None:
        path = write(etc / "wirt.toml", "")
        os.chown(path, NOBODY, 0)
        with pytest.raises(ConfigError, match=f"owned by uid {NOBODY}, not root"):
            load_config(str(path))

    def test_parent_not_root_owned(self, etc: Path) -> None:
        path = write(etc / "wirt.toml", "")
        os.chown(etc, NOBODY, 0)
        with pytest.raises(ConfigError, match=f"{etc} is owned by uid {NOBODY}"):
            load_config(str(path))

    @pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
    def test_parent_writable(self, etc: Path, mode: int) -> None:
        path = write(etc / "wirt.toml", "")
        etc.chmod(mode)
        with pytest.raises(ConfigError, match=f"{etc} is writable by group or others"):
            load_config(str(path))

    def test_walk_goes_up_to_the_root(self, tmp_path: Path) -> None:
        deep = tmp_path / "a" / "b" / "c"
        deep.mkdir(parents=True, mode=0o755)
        path = write(deep / "wirt.toml", "")
        (tmp_path / "a").chmod(0o777)  # three levels above the file
        with pytest.raises(ConfigError, match=f"{tmp_path / 'a'} is writable"):
            load_config(str(path))
        (tmp_path / "a").chmod(0o755)
        os.chown(tmp_path / "a", NOBODY, 0)
        with pytest.raises(ConfigError, match=f"{tmp_path / 'a'} is owned by uid"):
            load_config(str(path))

    def test_sticky_root_folder_is_fine(self, tmp_path: Path) -> None:
        sticky = tmp_path / "sticky"
        sticky.mkdir()
        sticky.chmod(0o1777)
        tmp_path.chmod(0o755)
        assert load_config(str(write(sticky / "wirt.toml", ""))).group == "vmguests"

    def test_sticky_folder_of_another_owner(self, tmp_path: Path) -> None:
        sticky = tmp_path / "sticky"
        sticky.mkdir()
        sticky.chmod(0o1777)
        os.chown(sticky, NOBODY, 0)
        tmp_path.chmod(0o755)
        with pytest.raises(ConfigError, match="owned by uid"):
            load_config(str(write(sticky / "wirt.toml", "")))

    def test_symlink_to_a_user_file(self, etc: Path, tmp_path: Path) -> None:
        user_dir = tmp_path / "home"
        user_dir.mkdir(mode=0o755)
        target = write(user_dir / "evil.toml", 'group = "evil"')
        os.chown(target, NOBODY, 0)
        (etc / "wirt.toml").symlink_to(target)
        with pytest.raises(ConfigError, match="owned by uid"):
            load_config(str(etc / "wirt.toml"))

    def test_link_swapped_after_the_check(self, etc: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        # --config names a link in someone else's folder: they retarget it to their own
        # file right after the ownership check; the file read must be the one checked
        good = write(etc / "wirt.toml", 'group = "good"')
        user_dir = tmp_path / "home"
        user_dir.mkdir(mode=0o755)
        os.chown(user_dir, NOBODY, 0)
        evil = write(user_dir / "evil.toml", 'group = "evil"')
        os.chown(evil, NOBODY, 0)
        link = user_dir / "wirt.toml"
        link.symlink_to(good)

        real_check = config_module.check_root_owned

        def check_then_swap(path: str, what: str) -> str:
            checked = real_check(path, what)
            link.unlink()
            link.symlink_to(evil)
            return checked

        monkeypatch.setattr("wirt_wrapper.rules.config.check_root_owned", check_then_swap)
        assert load_config(str(link)).group == "good"

    def test_check_root_owned_names_what(self, etc: Path) -> None:
        path = write(etc / "x", "", 0o666)
        with pytest.raises(ConfigError, match=r"^code .*x is writable"):
            check_root_owned(str(path), "code")


@pytest.mark.parametrize("key,value", [("max_file_bytes", 1 << 30), ("max_files_per_user", 10**7)])
def test_limits_have_an_upper_bound(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"limits.{key}: must be at most"):
        parse_config({"limits": {key: value}}, "x")


@pytest.fixture
def code_dir() -> Any:
    """A folder every user can reach (pytest's own tmp folder is 0700), removed afterwards."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="wirt-code-", dir="/var/tmp"))
    yield top
    shutil.rmtree(top)


def _code_copy(tmp_path: Path) -> Path:
    """A root-owned copy of the package, modes as installed (with a cache in a subfolder)."""
    import shutil

    package = Path(config_module.__file__).parent.parent
    copy = tmp_path / "code" / "wirt_wrapper"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "user" / "__pycache__").mkdir()
    (copy / "user" / "__pycache__" / "side.cpython-311.pyc").write_bytes(b"")
    for path in [tmp_path, tmp_path / "code", *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def _pass_from(copy: Path) -> subprocess.CompletedProcess[str]:
    run = ("import sys; sys.path.insert(0, sys.argv[1]); from wirt_wrapper.root.main import main; "
           "sys.exit(main(['--config', '/nonexistent']))")
    return subprocess.run([sys.executable, "-I", "-c", run, str(copy.parent)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("target", ["root/main.py", "rules/actions.py", "user",
                                    "user/__pycache__/side.cpython-311.pyc"])
def test_code_others_could_change_is_refused(code_dir: Path, target: str) -> None:
    """SPEC 5.8: a group/other-writable module or folder, in any subfolder, or the bytecode
    Python would load instead."""
    copy = _code_copy(code_dir)
    (copy / target).chmod(0o777 if (copy / target).is_dir() else 0o666)
    proc = _pass_from(copy)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert f"{target} is writable by group or others" in proc.stderr


@pytest.mark.parametrize(("target", "mode"), [("user", 0o700), ("rules/status.py", 0o600),
                                              (".", 0o700), ("..", 0o700)])
def test_code_users_cannot_read_is_refused(code_dir: Path, target: str, mode: int) -> None:
    """Issue 9.5: user sides import after the drop; refuse at start, not half way."""
    copy = _code_copy(code_dir)
    path = (copy / target).resolve()
    path.chmod(mode)
    proc = _pass_from(copy)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert f"{path} is not readable by unprivileged users" in proc.stderr
    path.chmod(0o755 if path.is_dir() else 0o644)
    later = _pass_from(copy)  # the same copy, readable: the start-up checks pass
    assert "config file /nonexistent" in later.stderr, later.stderr


def test_a_pillow_users_cannot_read_is_refused(code_dir: Path) -> None:
    """A user side loads Pillow after the drop (a screenshot): a Pillow (or the libraries
    its wheel brings, pillow.libs) that users cannot read is refused at start."""
    site = code_dir / "site"
    (site / "PIL").mkdir(parents=True)
    (site / "PIL" / "__init__.py").write_text("")
    (site / "pillow.libs").mkdir()
    for path in [code_dir, site, *site.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    check = ("import sys; sys.path.insert(0, sys.argv[1]); from wirt_wrapper.root import startup\n"
             "try:\n    startup.check_readable()\nexcept Exception as exc:\n    print(exc)\n"
             "else:\n    print('readable')\n")

    def run() -> str:
        return subprocess.run([sys.executable, "-I", "-c", check, str(site)], capture_output=True,
                              text=True, check=True).stdout.strip()

    assert run() == "readable"
    for folder in (site / "PIL", site / "pillow.libs"):
        folder.chmod(0o700)
        assert f"{folder} is not readable by unprivileged users" in run()
        folder.chmod(0o755)


class TestSettings:
    """[settings] and [quota] (SPEC section 9)."""

    def test_defaults(self) -> None:
        config = parse_config({}, "x")
        assert config.settings == SettingsConfig(enabled=True, max_memory_mib=8192,
                                                 max_vcpus=4, iso_dir="")
        assert config.quota == QuotaConfig(memory_mib=0, vcpus=0)
        assert parse_config({"settings": {}, "quota": {}}, "x") == config

    def test_every_key(self) -> None:
        config = parse_config({
            "settings": {"enabled": False, "max_memory_mib": 65536, "max_vcpus": 64,
                         "iso_dir": "/srv/isos"},
            "quota": {"memory_mib": 16384, "vcpus": 8},
        }, "x")
        assert config.settings == SettingsConfig(False, 65536, 64, "/srv/isos")
        assert config.quota == QuotaConfig(16384, 8)

    def test_one_key_keeps_the_other_defaults(self) -> None:
        config = parse_config({"settings": {"max_vcpus": 2}, "quota": {"vcpus": 3}}, "x")
        assert config.settings == SettingsConfig(max_vcpus=2)
        assert config.quota == QuotaConfig(vcpus=3)

    @pytest.mark.parametrize("key,value", [
        ("enabled", "yes"), ("enabled", 1), ("enabled", None),
        ("max_memory_mib", 0), ("max_memory_mib", -1), ("max_memory_mib", 8192.0),
        ("max_memory_mib", "8192"), ("max_memory_mib", True), ("max_memory_mib", float("inf")),
        ("max_vcpus", 0), ("max_vcpus", -4), ("max_vcpus", 2.5), ("max_vcpus", True),
        ("max_vcpus", False), ("max_vcpus", [4]), ("max_vcpus", float("nan")),
        ("iso_dir", 1), ("iso_dir", True), ("iso_dir", ["/srv"]), ("iso_dir", None),
    ])
    def test_settings_wrong_type(self, key: str, value: object) -> None:
        assert bad({"settings": {key: value}}).startswith(f"settings.{key}: must be")

    @pytest.mark.parametrize("value", ["isos", "./isos", "srv/isos", " /srv", "~/isos",
                                       "/srv/is\nos", "/srv/\x00", "/srv/\x7f",
                                       "/srv/\x85", "/srv/\t"])
    def test_iso_dir(self, value: str) -> None:
        message = bad({"settings": {"iso_dir": value}})
        assert message.startswith("settings.iso_dir: "), message
        assert "absolute path" in message or "control character" in message

    @pytest.mark.parametrize("value", ["", "/srv/isos", "/", "/srv/ISO images/é"])
    def test_iso_dir_good(self, value: str) -> None:
        assert parse_config({"settings": {"iso_dir": value}}, "x").settings.iso_dir == value

    @pytest.mark.parametrize("key,value,rule", [
        ("max_memory_mib", 63, "must be at least 64"),
        ("max_memory_mib", 16 * 1024 * 1024 + 1, "must be at most 16777216"),
        ("max_memory_mib", 2**63, "must be at most"),
        ("max_vcpus", 4097, "must be at most 4096"),
        ("max_vcpus", 10**30, "must be at most 4096"),
    ])
    def test_settings_bounds(self, key: str, value: int, rule: str) -> None:
        message = bad({"settings": {key: value}})
        assert message.startswith(f"settings.{key}: {rule}") and str(value) in message

    @pytest.mark.parametrize("key,value", [
        ("max_memory_mib", 64), ("max_memory_mib", 16 * 1024 * 1024),
        ("max_vcpus", 1), ("max_vcpus", 4096),
    ])
    def test_settings_bounds_inclusive(self, key: str, value: int) -> None:
        assert getattr(parse_config({"settings": {key: value}}, "x").settings, key) == value

    @pytest.mark.parametrize("key,value", [
        ("memory_mib", -1), ("memory_mib", 1.0), ("memory_mib", 0.0), ("memory_mib", True),
        ("memory_mib", False), ("memory_mib", "0"), ("memory_mib", None),
        ("vcpus", -1), ("vcpus", 2.0), ("vcpus", True), ("vcpus", float("nan")),
        ("vcpus", float("-inf")), ("vcpus", [1]),
    ])
    def test_quota_wrong_type(self, key: str, value: object) -> None:
        message = bad({"quota": {key: value}})
        assert message.startswith(f"quota.{key}: must be a non-negative int"), message

    @pytest.mark.parametrize("key,value", [("memory_mib", 0), ("memory_mib", 1),
                                           ("memory_mib", 1 << 30), ("vcpus", 0),
                                           ("vcpus", 1), ("vcpus", 1 << 20)])
    def test_quota_good(self, key: str, value: int) -> None:
        assert getattr(parse_config({"quota": {key: value}}, "x").quota, key) == value

    @pytest.mark.parametrize("key,value", [("memory_mib", (1 << 30) + 1),
                                           ("vcpus", (1 << 20) + 1), ("vcpus", 2**64)])
    def test_quota_bounds(self, key: str, value: int) -> None:
        assert bad({"quota": {key: value}}).startswith(f"quota.{key}: must be at most")

    def test_in_a_file(self, etc: Path) -> None:
        path = write(etc / "wirt.toml", '[settings]\niso_dir = "/srv/isos"\nmax_vcpus = 8\n'
                     "[quota]\nmemory_mib = 4096\n")
        config = load_config(str(path))
        assert config.settings == SettingsConfig(max_vcpus=8, iso_dir="/srv/isos")
        assert config.quota == QuotaConfig(memory_mib=4096)

    def test_toml_true_is_not_a_number_in_a_file(self, etc: Path) -> None:
        path = write(etc / "wirt.toml", "[quota]\nvcpus = true\n")
        with pytest.raises(ConfigError, match=r"^quota\.vcpus: must be a non-negative int"):
            load_config(str(path))

    def test_the_shipped_file_lists_them(self) -> None:
        import tomllib

        shipped = Path(config_module.__file__).parents[2] / "deploy" / "wirt.toml"
        data = tomllib.loads(shipped.read_text())
        assert set(data["settings"]) == {"enabled", "max_memory_mib", "max_vcpus", "iso_dir"}
        assert set(data["quota"]) == {"memory_mib", "vcpus"}
        assert parse_config(data, "x") == Config(path="x")


class TestHosts:
    """[[hosts]] (SPEC 13): each entry's name and uri, the entry and key named."""

    @staticmethod
    def toml(text: str) -> dict[str, Any]:
        import tomllib

        return tomllib.loads(text)

    def test_uri_alone_is_one_host_named_local(self) -> None:
        config = parse_config({"uri": "test:///default"}, "/x.toml")
        assert config.hosts == ()
        assert [(h.name, h.uri) for h in config.host_list()] == [("local", "test:///default")]

    def test_entries_in_order(self) -> None:
        config = parse_config(self.toml(
            '[[hosts]]\nname = "node1"\nuri = "qemu:///system"\n'
            '[[hosts]]\nname = "node2"\nuri = "qemu+ssh://wirt@node2/system?keyfile=/k"\n'),
            "/x.toml")
        assert [(h.name, h.uri) for h in config.host_list()] == [
            ("node1", "qemu:///system"), ("node2", "qemu+ssh://wirt@node2/system?keyfile=/k")]

    def test_uri_with_hosts_is_an_error(self) -> None:
        message = bad(self.toml('uri = "qemu:///system"\n'
                                '[[hosts]]\nname = "a"\nuri = "qemu:///system"\n'))
        assert message.startswith("uri: not together with [[hosts]]")

    @pytest.mark.parametrize(("text", "expected"), [
        ('[[hosts]]\nname = "a"\nuri = "test:///default"\n[[hosts]]\nname = "-b"\nuri = "x://"\n',
         "hosts[2].name: must be 1 to 63 letters"),
        ('[[hosts]]\nname = "a"\nuri = "test:///default"\n[[hosts]]\nname = "a"\nuri = "x://"\n',
         "hosts[2].name: 'a' is the name of an earlier entry too"),
        ('[[hosts]]\nname = "a"\n', "hosts[1].uri: missing"),
        ('[[hosts]]\nuri = "test:///default"\n', "hosts[1].name: missing"),
        ('[[hosts]]\nname = "a"\nuri = "qemu system"\n', "hosts[1].uri: must be a libvirt URI"),
        ('[[hosts]]\nname = "a"\nuri = 5\n', "hosts[1].uri: must be a non-empty string"),
        ('[[hosts]]\nname = "a"\nuri = "test:///default"\nport = 1\n',
         "hosts[1].port: unknown key"),
        (f'[[hosts]]\nname = "{"a" * 64}"\nuri = "test:///default"\n',
         "hosts[1].name: must be 1 to 63"),
        ('hosts = "node1"\n', "hosts: must be one or more [[hosts]] tables"),
        ('hosts = []\n', "hosts: must be one or more [[hosts]] tables"),
        ('hosts = ["node1"]\n', "hosts[1]: must be a table"),
    ])
    def test_bad_entries_are_named(self, text: str, expected: str) -> None:
        assert bad(self.toml(text)).startswith(expected)
