#!/bin/sh
# virsh_wrapper.sh -- drop-in for the legacy virsh-wrapper script, at its old path
# (/usr/local/bin/virsh_wrapper/backend/virsh_wrapper.sh), so the old cron line
#   */2 * * * * wrapper test -x <this file> && <this file>
# keeps working.  It runs one wirt pass over the legacy layout (~/virsh/dom-<vm>/).
#
# Privilege: the pass needs root.  Run by root, it runs the pass.  Run by anyone
# else (the old cron line runs it as 'wrapper', without sudo), it asks sudo,
# never interactively, to run this same file as root; sudoers.d/wirt allows that
# for the wrapper user only, with no arguments.  Everyone else is refused.
#
# Distrusts the environment: the paths below are fixed when wirt is installed
# (deploy/install.sh), PATH is reset, and Python runs isolated (-I: no PYTHON*
# variables, no user site-packages, no current folder on sys.path).
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
SELF=/usr/local/bin/virsh_wrapper/backend/virsh_wrapper.sh
PYTHON=/opt/wirt/venv/bin/python
CONFIG=/etc/wirt/wirt.toml

if [ "$(id -u)" != 0 ]; then
    if [ $# -gt 0 ]; then
        echo "virsh_wrapper.sh: must run as root; as $(id -un) it takes no arguments" >&2
        exit 3
    fi
    if ! /usr/bin/sudo -n -l "$SELF" >/dev/null 2>&1; then
        echo "virsh_wrapper.sh: must run as root. Run it as root, or as the wrapper user," \
             "whom /etc/sudoers.d/wirt lets run $SELF as root; sudo does not let" \
             "$(id -un) do that." >&2
        exit 3
    fi
    exec /usr/bin/sudo -n -u root -- "$SELF"
fi

if [ ! -x "$PYTHON" ]; then
    echo "virsh_wrapper.sh: wirt is not installed ($PYTHON is missing): run deploy/install.sh" >&2
    exit 1
fi
cd /
exec "$PYTHON" -I -m wirt_wrapper --config "$CONFIG" --layout legacy "$@"
