"""VM names, domain names and ownership (wirt_wrapper.rules.actions, SPEC section 4).

Pure rules, no users needed: these decide which domain a user's folder may
drive, so every look-alike and every collision is spelled out.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wirt_wrapper.rules.actions import (
    VM_NAME,
    Claimants,
    Rejection,
    check_vm_name,
    domain_for,
    owner_problem,
)

T = "{user}-{vm}"


class TestVmName:
    @pytest.mark.parametrize("name", ["web", "a", "0", "Web-01", "a.b", "a_b", "a-", "a.",
                                      "a..b", "x" * 63, "9" * 63, "db.example.org"])
    def test_accepted(self, name: str) -> None:
        assert check_vm_name(name) == name

    @pytest.mark.parametrize("name", [
        "", ".", "..", "...", ".web", "-web", "_web", "web/", "/web", "a/b", "../bob",
        "x" * 64, "x" * 255, "web\n", "web\r", "\nweb", "web ", " web", "w eb", "web\t",
        "web\0", "w\0", "wеb",  # Cyrillic 'е'
        "\u0430",  # Cyrillic 'а' alone
        "ｗｅｂ",  # fullwidth
        "web\u200b",  # zero-width space
        "we\u0301b",  # combining accent
        "ß", "İ", "web:1", "web@host", "web=1", "web*", "$(id)", "`id`", "web;x",
        "{user}", "{vm}", "web%s", "\x1b[2J",
    ])
    def test_rejected(self, name: str) -> None:
        with pytest.raises(Rejection) as info:
            check_vm_name(name)
        message = str(info.value)
        assert "is not allowed" in message and "at most 63" in message
        assert all(0x20 <= ord(c) < 0x7F for c in message), message

    def test_63_vs_64(self) -> None:
        assert check_vm_name("a" * 63)
        with pytest.raises(Rejection):
            check_vm_name("a" * 64)

    @settings(max_examples=800, deadline=None)
    @given(st.text(max_size=70))
    def test_pattern_is_plain_ascii(self, name: str) -> None:
        ok = bool(VM_NAME.fullmatch(name))
        expected = (0 < len(name) <= 63 and name[0].isascii() and name[0].isalnum()
                    and all(c.isascii() and (c.isalnum() or c in "_.-") for c in name))
        assert ok == expected


class TestDomainFor:
    def test_default_template(self) -> None:
        assert domain_for(T, "alice", "web") == "alice-web"

    def test_other_templates(self) -> None:
        assert domain_for("vm-{user}_{vm}", "alice", "web") == "vm-alice_web"
        assert domain_for("{vm}.{user}", "alice", "web") == "web.alice"

    @pytest.mark.parametrize("vm", ["..", "../bob-web", "a/b", "wеb", "web\n", "x" * 64, ""])
    def test_bad_vm_never_makes_a_domain(self, vm: str) -> None:
        with pytest.raises(Rejection):
            domain_for(T, "alice", vm)

    def test_braces_in_vm_cannot_reach_the_template(self) -> None:
        with pytest.raises(Rejection):
            domain_for(T, "alice", "{user}")


class TestClaimants:
    def test_a_and_a_b(self) -> None:
        # user a's VM b-c and user a-b's VM c both name a-b-c
        assert Claimants(T, ["a", "a-b"]).find("a-b-c") == [("a", "b-c"), ("a-b", "c")]
        assert Claimants(T, ["a-b"]).find("a-b-c") == [("a-b", "c")]
        assert Claimants(T, ["a"]).find("a-b-c") == [("a", "b-c")]

    def test_chain_of_prefixes(self) -> None:
        members = ["a", "a-b", "a-b-c", "b"]
        assert Claimants(T, members).find("a-b-c-d") == [("a", "b-c-d"), ("a-b", "c-d"),
                                                    ("a-b-c", "d")]

    def test_no_claim_without_a_vm(self) -> None:
        assert Claimants(T, ["a"]).find("a-") == []
        assert Claimants(T, ["a"]).find("a") == []
        assert Claimants(T, ["a-b"]).find("a-b") == []

    def test_claim_needs_a_valid_vm_name(self) -> None:
        assert Claimants(T, ["a"]).find("a-.x") == []
        assert Claimants(T, ["a"]).find("a-" + "x" * 64) == []
        assert Claimants(T, ["a"]).find("a-" + "x" * 63) == [("a", "x" * 63)]

    def test_unrelated(self) -> None:
        assert Claimants(T, ["alice", "bo", "bobby"]).find("bob-web") == []
        assert Claimants(T, ["bob-w"]).find("bob-web") == []  # VM 'eb' would need 'bob-w-eb'

    def test_prefix_and_suffix_template(self) -> None:
        t = "vm-{user}.{vm}.x"
        found = Claimants(t, ["a", "a.b", "c"]).find("vm-a.b.c.x")
        assert found == [("a", "b.c"), ("a.b", "c")]
        assert Claimants(t, ["a"]).find("vm-a.x") == []

    @settings(max_examples=300, deadline=None)
    @given(user=st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True),
           vm=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True))
    def test_every_domain_is_claimed_by_its_maker(self, user: str, vm: str) -> None:
        domain = domain_for(T, user, vm)
        assert (user, vm) in Claimants(T, [user]).find(domain)


class TestOwnerProblem:
    def test_plain_name_is_yours(self) -> None:
        assert owner_problem("alice", "alice-web", None, []) is None

    def test_metadata_owner_wins_over_the_name(self) -> None:
        assert owner_problem("alice", "alice-web", "alice", [("a", "lice-web")]) is None
        problem = owner_problem("alice", "alice-web", "bob", [])
        assert problem is not None and "assigned to another user" in problem
        assert "'alice-web'" in problem

    def test_collision_is_refused_both_ways(self) -> None:
        for user, others in (("a", [("a-b", "c")]), ("a-b", [("a", "b-c")])):
            problem = owner_problem(user, "a-b-c", None, others)
            assert problem is not None and "ambiguous" in problem
            assert "owner metadata" in problem
            other, vm = others[0]
            assert f"user '{other}' VM '{vm}'" in problem

    def test_collision_settled_by_metadata(self) -> None:
        assert owner_problem("a", "a-b-c", "a", [("a-b", "c")]) is None
        assert owner_problem("a-b", "a-b-c", "a", [("a", "b-c")]) is not None

    @pytest.mark.parametrize("meta", ["", "Alice", "alice ", "аlice", "*", "root"])
    def test_metadata_must_match_exactly(self, meta: str) -> None:
        assert owner_problem("alice", "alice-web", meta, []) is not None
