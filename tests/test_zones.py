"""The trust zones are folders, and the folders keep to their imports (issue 9).

Read from the source with :mod:`ast` (every import, also inside functions),
so a crossing fails here before it can run anywhere:

* ``rules``: pure rules; import only ``rules``;
* ``user``: runs as the user; ``rules``, ``user`` and the wire format
  (``boundary.channel``);
* ``cli`` and ``legacy``: run as the calling user; ``rules``, ``user``, their own;
* ``boundary``: the fork and the drop; ``rules``, ``boundary``, ``user`` (what a
  child runs);
* ``root``: runs as root; ``rules``, ``boundary``, ``root`` (never user-side code).

Only ``root`` loads libvirt or PAM.  No module imports another's private name,
and the module graph has no cycle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "wirt_wrapper"
ZONES = ("rules", "user", "cli", "legacy", "boundary", "root")
ALLOWED = {
    "rules": {"rules"},
    "user": {"rules", "user", "boundary.channel"},
    "cli": {"rules", "user", "cli"},
    "legacy": {"rules", "user", "legacy"},
    "boundary": {"rules", "boundary", "user"},
    "root": {"rules", "boundary", "root"},
}
ROOT_ONLY = {"libvirt", "libvirtmod", "pam"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(("wirt_wrapper", *parts))] = path
    return found


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names imported from it, line) for every import in *path*."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports hide the zone: not used here
                found.append((f"relative:{node.module}", [], node.lineno))
            elif node.module:
                found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def zone_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "wirt_wrapper" else None


def reaches(target: str, allowed: set[str]) -> bool:
    inner = target.removeprefix("wirt_wrapper.")
    return any(inner == a or inner.startswith(a + ".") for a in allowed)


def test_every_zone_is_installed() -> None:
    """pyproject lists every zone folder as a package (else an install leaves one out)."""
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    listed = project["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted(["wirt_wrapper", *(f"wirt_wrapper.{z}" for z in ZONES)])
    assert all((PACKAGE / zone / "__init__.py").is_file() for zone in ZONES)


def test_every_module_sits_in_a_zone_folder() -> None:
    outside = [m for m in modules() if zone_of(m) not in ZONES
               and m not in ("wirt_wrapper.__init__", "wirt_wrapper.__main__")
               and not m.endswith(".__init__")]
    assert outside == []
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted(ZONES)


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_stay_in_their_zone(module: str) -> None:
    zone = zone_of(module)
    if zone is None:
        return  # the package's own __init__/__main__
    crossings = []
    for target, names, line in imports(modules()[module]):
        if target.startswith("relative:"):
            crossings.append(f"line {line}: relative import {target}")
        if target.split(".")[0] in ROOT_ONLY and zone != "root":
            crossings.append(f"line {line}: {target} is for root only")
        if target.startswith("wirt_wrapper"):
            full = [target] + [f"{target}.{n}" for n in names
                               if f"{target}.{n}" in modules()]
            # every module named (from a package import a, b: each), not only the last;
            # the package itself (its __version__) is no zone
            for item in full[1:] if len(full) > 1 else full:
                if not reaches(item, ALLOWED[zone]) and item != "wirt_wrapper":
                    crossings.append(f"line {line}: {zone} imports {item}")
    assert crossings == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_private_names_across_modules(module: str) -> None:
    path = modules()[module]
    tree = ast.parse(path.read_text())
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("wirt_wrapper"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.endswith("__"):
                    found.append(f"line {node.lineno}: imports {node.module}.{alias.name}")
                aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            found.append(f"line {node.lineno}: uses {node.value.id}.{node.attr}")
    assert found == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append(" -> ".join(stack[stack.index(node):] + [node]))
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*stack, node], done)
        done.add(node)

    finished: set[str] = set()
    for module in sorted(graph):
        visit(module, [], finished)
    return cycles


def test_the_cycle_finder_finds_one() -> None:
    """The check below can fail: the shape of the old auditquery -> main -> ... cycle."""
    graph = {"auditquery": {"main"}, "main": {"rootside"}, "rootside": {"notify"},
             "notify": {"auditquery"}, "actions": set()}
    assert find_cycles(graph) == ["auditquery -> main -> rootside -> notify -> auditquery"]


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    known = modules()
    for module, path in known.items():
        edges = set()
        for target, names, _ in imports(path):
            for candidate in (target, *(f"{target}.{n}" for n in names)):
                if candidate in known and candidate != module:
                    edges.add(candidate)
        graph[module] = edges
    assert find_cycles(graph) == []


# Code that runs after the drop to a user, where the interpreter's library may be
# unreadable: the spawner imports these modules before it forks (issue 9.5).
AFTER_DROP = ("rules", "user", "boundary.channel")
# ... all but Pillow, loaded by the user side that writes a screenshot (its logging and
# threading would add at-fork work to every user side: privsep.Spawner); the start-up
# check makes sure users can read it (startup.check_readable)
LATE_ON_PURPOSE = {("wirt_wrapper.user.outputs", "from PIL import Image")}


@pytest.mark.parametrize("module", sorted(m for m in modules()
                                          if reaches(m, set(AFTER_DROP))))
def test_code_run_after_the_drop_imports_nothing_late(module: str) -> None:
    """Imports only at module level: the spawner loaded them all before any user side."""
    late = []
    for node in ast.walk(ast.parse(modules()[module].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            late += [f"line {sub.lineno}: {ast.unparse(sub)}" for sub in ast.walk(node)
                     if isinstance(sub, (ast.Import, ast.ImportFrom))
                     and (module, ast.unparse(sub)) not in LATE_ON_PURPOSE]
    assert late == []


def test_the_user_side_loads_neither_libvirt_nor_root_code() -> None:
    """What a user side imports, in a fresh interpreter: nothing of root's."""
    import subprocess

    code = ("import sys; import wirt_wrapper.user.side, wirt_wrapper.user.probe, "
            "wirt_wrapper.cli.main, wirt_wrapper.legacy.migrate; "
            "print(sorted(m for m in sys.modules if m.startswith(('libvirt', 'pam', "
            "'wirt_wrapper.root'))))")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "[]"


def test_exit_codes_come_from_the_one_table() -> None:
    """No literal exit code outside rules/errors.py: os._exit(70), sys.exit(2), exit_code = 4,
    or a bare number returned by an entry point's main() or run()."""
    literal = []
    for module, path in modules().items():
        if module == "wirt_wrapper.rules.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                    "os._exit", "sys.exit", "SystemExit", "exit") and node.args \
                    and isinstance(node.args[0], ast.Constant):
                literal.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Assign) and any(
                    ast.unparse(t).endswith("exit_code") for t in node.targets) \
                    and isinstance(node.value, ast.Constant):
                literal.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.FunctionDef) and node.name in ("main", "run", "run_pass"):
                literal += [f"{module}:{sub.lineno}: {ast.unparse(sub)}" for sub in ast.walk(node)
                            if isinstance(sub, ast.Return) and isinstance(sub.value, ast.Constant)
                            and isinstance(sub.value.value, int)]
    assert literal == []
