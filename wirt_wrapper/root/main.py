"""``virsh_wrapper``: one pass over every member's spool (run as root, from cron via sudo).

Trusts: root-owned code and config.  Distrusts: the environment (sudo may
pass some through, and libvirt reads ``LIBVIRT_*``), every argument's value
until checked, and everything in users' homes.  :mod:`startup` replaces the
environment and checks the install before libvirt is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import TYPE_CHECKING

from wirt_wrapper.root import startup
from wirt_wrapper.rules.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, WirtError

if TYPE_CHECKING:
    from wirt_wrapper.boundary.privsep import Prober, Spawner
    from wirt_wrapper.rules.config import Config

__all__ = ["build_parser", "main", "parse_args", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virsh_wrapper",
        description="Run one wirt pass: carry out the command files of every member of the "
        "configured group on the VMs they own.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help="config file (default /etc/wirt/wirt.toml)")
    parser.add_argument("--layout", choices=("wirt", "legacy", "all"), default="all",
                        help="which spool layout to serve (default: all that the config lists)")
    parser.add_argument("--user", metavar="NAME", help="serve only this member")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and judge everything, print what would happen, change nothing")
    parser.add_argument("--verbose", action="store_true", help="print each command's outcome")
    parser.add_argument("--watch", action="store_true",
                        help="stay in the foreground as the watch service: serve a member as "
                        "soon as their spool changes, and run a full pass every "
                        "watch.full_pass_seconds (holds the pass lock while it runs)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.watch and (args.user or args.dry_run):
        parser.error("--watch serves every member and changes things: "
                     "leave out --user and --dry-run")
    return args


def main(argv: list[str] | None = None) -> int:
    startup.scrub_environment()
    args = parse_args(argv)
    try:
        startup.prepare("virsh_wrapper", None, argv,
                        hint="it is started by cron through sudo "
                        "(sudo /usr/local/sbin/virsh_wrapper), or by root")
        return run(args)
    except WirtError as exc:
        print(f"virsh_wrapper: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one clear line for cron's mail, then the details
        print(f"virsh_wrapper: internal error ({type(exc).__name__}: {exc}); commands not "
              "yet handled wait for the next pass; please report this with the lines below",
              file=sys.stderr)
        traceback.print_exc()
        return EXIT_INTERNAL


def run(args: argparse.Namespace) -> int:
    from wirt_wrapper.boundary.privsep import Prober, Spawner
    from wirt_wrapper.root.state import acquire_lock, prepare_state
    from wirt_wrapper.rules.config import load_config
    from wirt_wrapper.rules.errors import ConfigError, LockError
    from wirt_wrapper.rules.layouts import LAYOUTS

    config = load_config(args.config)
    wanted = config.layouts if args.layout == "all" else (args.layout,)
    layouts = tuple(name for name in wanted if name in LAYOUTS)
    if not layouts:
        raise ConfigError(f"layout {args.layout!r} is not available in this version")
    prepare_state(config)
    lock = acquire_lock(config.lock_file)
    if lock is None:
        if args.watch:
            raise LockError("another pass or watch service holds the lock "
                            f"({config.lock_file}); not watching")
        if args.verbose:
            print("virsh_wrapper: another pass is running; nothing to do")
        return EXIT_OK
    # Forked before libvirt is loaded (see privsep): the prober even before lxml.
    prober = Prober()
    spawner = Spawner()
    if args.watch:
        return _watch(config, layouts, spawner, prober, args.verbose, lock)
    from wirt_wrapper.root.scheduler import Options, Pass

    options = Options(layouts=layouts, users=None if args.user is None else frozenset([args.user]),
                      dry_run=args.dry_run,
                      verbose=args.verbose)
    try:
        summary = Pass(config, options, spawner, prober).run()
    finally:
        spawner.close()
        prober.close()
    if args.verbose or args.dry_run:
        print(f"virsh_wrapper: {summary.line()}")
    os.close(lock)
    return EXIT_OK


def _watch(config: Config, layouts: tuple[str, ...], spawner: Spawner, prober: Prober,
           verbose: bool, lock: int) -> int:
    """The watch service (root.watch), until SIGTERM; the lock is held all along."""
    from wirt_wrapper.root.events import LifecycleEvents
    from wirt_wrapper.root.watch import Service

    events = LifecycleEvents(config.uri)  # libvirt's event loop: before any connection
    try:
        Service(config, layouts, spawner, prober, verbose=verbose, events=events).run()
    finally:
        events.close()
        spawner.close()
        prober.close()
        os.close(lock)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
