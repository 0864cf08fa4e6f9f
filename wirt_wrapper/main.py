"""``virsh_wrapper``: one pass over every member's spool (run as root, from cron via sudo).

Trusts: root-owned code and config.  Distrusts: the environment (sudo may
pass some through, and libvirt reads ``LIBVIRT_*``), every argument's value
until checked, and everything in users' homes.  The environment is replaced
before libvirt is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

SAFE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def scrub_environment() -> None:
    """Forget every variable the caller set; libvirt and PAM read some of them."""
    os.environ.clear()
    os.environ.update(SAFE_ENV)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def check_code() -> None:
    """The code that runs as root must be root's alone (SPEC 5.8)."""
    from .config import check_root_owned

    package = os.path.dirname(os.path.abspath(__file__))
    check_root_owned(package, "code")
    cache = os.path.join(package, "__pycache__")  # Python loads these instead of the .py
    for folder in (package, cache) if os.path.isdir(cache) else (package,):
        for name in sorted(os.listdir(folder)):
            if name.endswith((".py", ".pyc")):
                check_root_owned(os.path.join(folder, name), "code")


def main(argv: list[str] | None = None) -> int:
    scrub_environment()
    args = parse_args(argv)
    from .errors import EXIT_INTERNAL, NotRootError, WirtError

    try:
        if os.geteuid() != 0:
            raise NotRootError(
                "virsh_wrapper must run as root: it is started by cron through sudo "
                "(sudo /usr/local/sbin/virsh_wrapper), or by root"
            )
        check_code()
        return run(args)
    except WirtError as exc:
        print(f"virsh_wrapper: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line for cron's mail, then the details
        print(f"virsh_wrapper: internal error ({type(exc).__name__}: {exc}); commands not "
              "yet handled wait for the next pass; please report this with the lines below",
              file=sys.stderr)
        traceback.print_exc()
        return EXIT_INTERNAL


def run(args: argparse.Namespace) -> int:
    from .audit import acquire_lock
    from .config import load_config
    from .errors import ConfigError
    from .layouts import LAYOUTS
    from .privsep import Prober, Spawner
    from .userprobe import look

    config = load_config(args.config)
    wanted = config.layouts if args.layout == "all" else (args.layout,)
    layouts = tuple(name for name in wanted if name in LAYOUTS)
    if not layouts:
        raise ConfigError(f"layout {args.layout!r} is not available in this version")
    lock = acquire_lock(config.lock_file)
    if lock is None:
        if args.verbose:
            print("virsh_wrapper: another pass is running; nothing to do")
        return 0
    # Forked before libvirt is loaded (see privsep): the prober even before lxml.
    prober = Prober(look)
    from .userside import user_main

    spawner = Spawner(user_main)
    from .rootside import Options, Pass

    options = Options(layouts=layouts, user=args.user, dry_run=args.dry_run,
                      verbose=args.verbose)
    try:
        summary = Pass(config, options, spawner, prober).run()
    finally:
        spawner.close()
        prober.close()
    if args.verbose or args.dry_run:
        print(f"virsh_wrapper: {summary.line()}")
    os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
