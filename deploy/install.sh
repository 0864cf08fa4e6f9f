#!/usr/bin/env bash
# deploy/install.sh -- install wirt on a Debian 12 host, or remove it (run as root).
#
#   deploy/install.sh [--wrapper-user NAME] [--group NAME]   install, or update in place
#   deploy/install.sh --uninstall [--purge]
#
# Install (re-running it is harmless: each step checks before it acts):
#   Debian packages it needs (python3-venv, a compiler and libvirt-dev to build
#   libvirt-python, sudo, cron); the group (default vmguests) and the wrapper
#   user (default wrapper) if missing; wirt in a root-owned virtualenv
#   /opt/wirt/venv on Debian's /usr/bin/python3; the pass at
#   /usr/local/sbin/virsh_wrapper and wirt-audit; the legacy drop-in at the old script's path
#   /usr/local/bin/virsh_wrapper/backend/virsh_wrapper.sh; the users'
#   /usr/local/bin/wirt-migrate-legacy; the members' /usr/local/bin/wirt and its
#   bash completion; /etc/sudoers.d/wirt (checked with
#   visudo -cf before it is put in place); /etc/cron.d/wirt;
#   /etc/logrotate.d/wirt; the watch service's unit /etc/systemd/system/wirt-watch.service
#   (enabled and started when systemd is PID 1; otherwise it says how to start
#   the service by hand, and the cron passes serve meanwhile); the PAM service /etc/pam.d/wirt and a default
#   /etc/wirt/wirt.toml when missing (never overwritten); /var/log/wirt and
#   /var/lib/wirt (root only).
#
# --uninstall stops and removes the watch service and removes the code, the
# executables, sudoers, cron and logrotate files; it keeps the config, the audit log, the state and the accounts, as
# apt's "remove" would.  --purge also removes what install created (listed
# in /var/lib/wirt/installed): config and PAM file unless changed since,
# logs, state, the wrapper user, and the group if no one is in it any more;
# then it lists, with paths, what it kept: files it did not write or that
# were changed, state the config places elsewhere (the lock in /run/wirt),
# accounts that were there before, and the members' spools (homes are never
# touched).
set -euo pipefail
umask 022
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/wirt
VENV=$PREFIX/venv
EXE=/usr/local/sbin/virsh_wrapper
AUDIT=/usr/local/sbin/wirt-audit
SHIM_TOP=/usr/local/bin/virsh_wrapper
SHIM_DIR=$SHIM_TOP/backend
SHIM=$SHIM_DIR/virsh_wrapper.sh
MIGRATE=/usr/local/bin/wirt-migrate-legacy
WIRT=/usr/local/bin/wirt  # the members' command, on their PATH
COMPLETION=/usr/share/bash-completion/completions/wirt
MANDIR=/usr/local/share/man  # wirt(1), wirt.toml(5), virsh_wrapper(8), wirt-audit(8)
MANPAGES=(wirt.1 wirt.toml.5 virsh_wrapper.8 wirt-audit.8)
SUDOERS=/etc/sudoers.d/wirt
CRON=/etc/cron.d/wirt
LOGROTATE=/etc/logrotate.d/wirt
UNIT_NAME=wirt-watch.service
UNIT=/etc/systemd/system/$UNIT_NAME
SYSTEMD_RUNNING=/run/systemd/system  # exists when systemd is PID 1 (sd_booted)
PAM=/etc/pam.d/wirt
ETC=/etc/wirt
CONFIG=$ETC/wirt.toml
LOGDIR=/var/log/wirt
STATE=/var/lib/wirt
MANIFEST=$STATE/installed
LOCK=/run/wirt/wirt.lock  # the pass lock (lock_file's default)
PACKAGES=(python3-venv python3-dev gcc pkg-config libvirt-dev sudo cron)

say() { echo "wirt-install: $*"; }
die() { echo "wirt-install: $*" >&2; exit 1; }

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

WRAPPER=wrapper
GROUP=vmguests
MODE=install
PURGE=0
while [ $# -gt 0 ]; do
  case $1 in
    --wrapper-user) WRAPPER=${2:?--wrapper-user needs a name}; shift 2 ;;
    --group) GROUP=${2:?--group needs a name}; shift 2 ;;
    --uninstall) MODE=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "wirt-install: unknown argument: $1" >&2; usage 2 ;;
  esac
done
NAME_RE='^[a-z_][a-z0-9_-]{0,30}$'
[[ $WRAPPER =~ $NAME_RE ]] || die "--wrapper-user: '$WRAPPER' is not a plain user name"
[[ $GROUP =~ $NAME_RE ]] || die "--group: '$GROUP' is not a plain group name"
[ "$PURGE" = 0 ] || [ "$MODE" = uninstall ] || die "--purge goes with --uninstall"
[ "$(id -u)" = 0 ] || die "run me as root"

# --- what install created, so that --purge removes only that ----------------
remember() {  # remember KIND VALUE
  grep -qxF "$1 $2" "$MANIFEST" 2>/dev/null || echo "$1 $2" >> "$MANIFEST"
}
remembered() {  # remembered KIND: the values recorded for KIND
  [ -f "$MANIFEST" ] || return 0
  sed -n "s/^$1 //p" "$MANIFEST"
}
digest() { sha256sum "$1" | cut -d' ' -f1; }
remember_content() {  # remember_content PATH: what install wrote there, to see later edits
  local rest
  rest=$(grep -vF "sum $1 " "$MANIFEST" 2>/dev/null || true)
  printf '%s\n' "$rest" | sed '/^$/d' > "$MANIFEST.new"
  echo "sum $1 $(digest "$1")" >> "$MANIFEST.new"
  mv -f "$MANIFEST.new" "$MANIFEST"
}
as_written() {  # as_written PATH: true if PATH still holds what install wrote
  local want
  want=$(remembered sum | sed -n "s|^$1 ||p")
  [ -n "$want" ] && [ "$(digest "$1")" = "$want" ]
}

# install_file SRC DEST MODE: put SRC in place atomically (temp name + rename).
install_file() {
  local tmp
  tmp="$(dirname "$2")/.$(basename "$2").new"
  install -m "$3" -o root -g root "$1" "$tmp"
  mv -f "$tmp" "$2"
}

make_dir() {  # make_dir PATH MODE: create it (and remember that) if missing
  if [ ! -d "$1" ]; then
    install -d -m "$2" -o root -g root "$1"
    remember dir "$1"
  fi
}

# --- install ---------------------------------------------------------------
install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

install_accounts() {
  remember uses-group "$GROUP"
  remember uses-user "$WRAPPER"
  if ! getent group "$GROUP" >/dev/null; then
    groupadd "$GROUP"
    remember group "$GROUP"
    say "created group $GROUP"
  fi
  if ! getent passwd "$WRAPPER" >/dev/null; then
    # a real home: cron changes into it before it runs the job
    useradd --system --user-group --create-home --home-dir "/var/lib/wirt-$WRAPPER" \
      --shell /usr/sbin/nologin --comment "wirt pass (cron, sudo)" "$WRAPPER"
    remember user "$WRAPPER"
    say "created user $WRAPPER"
  fi
}

pip_quietly() {
  local out
  if ! out=$("$VENV/bin/pip" --disable-pip-version-check -q "$@" 2>&1); then
    echo "$out" >&2
    die "pip $1 failed (above)"
  fi
}

install_code() {
  local stage
  stage=$(mktemp -d)
  # build from a root-owned copy of just the package (nothing else of the checkout)
  tar -C "$REPO" --exclude=__pycache__ -cf - pyproject.toml README.md wirt_wrapper \
    | tar -C "$stage" -xf -
  make_dir "$PREFIX" 0755
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  pip_quietly install "$stage"  # wirt and its dependencies
  pip_quietly install --no-deps --force-reinstall "$stage"  # this checkout's code, always
  rm -rf "$stage"
  chown -R root:root "$PREFIX"
  chmod -R go-w "$PREFIX"
  # the same check the pass makes before it runs: code root-owned, all the way up
  "$VENV/bin/python" -I -c \
    "from wirt_wrapper.root.startup import check_code, check_readable; check_code(); check_readable()" \
    || die "the installed code in $VENV fails wirt's own ownership check"
}

install_executables() {
  install_file "$REPO/deploy/virsh_wrapper" "$EXE" 0755
  install_file "$REPO/deploy/wirt-audit" "$AUDIT" 0755
  install_file "$REPO/legacy/wirt-migrate-legacy" "$MIGRATE" 0755
  install_file "$REPO/deploy/wirt" "$WIRT" 0755
  install -d -m 0755 "$(dirname "$COMPLETION")"
  install_file "$REPO/completions/wirt.bash" "$COMPLETION" 0644
  local page
  for page in "${MANPAGES[@]}"; do
    install -d -m 0755 "$MANDIR/man${page##*.}"
    install_file "$REPO/deploy/man/$page" "$MANDIR/man${page##*.}/$page" 0644
  done
  if ! dpkg-query -W -f='${Status}' bash-completion 2>/dev/null | grep -q 'install ok installed'; then
    say "note: the bash-completion package is not installed: members get no tab completion" \
        "for wirt until it is (apt-get install bash-completion)"
  fi
  if ! command -v man >/dev/null; then
    say "note: no man command (the man-db package): the manual pages are in $MANDIR"
  fi
  if [ -e "$SHIM_TOP" ] && [ ! -d "$SHIM_TOP" ]; then
    die "$SHIM_TOP exists and is not a folder; the legacy drop-in goes in $SHIM_DIR"
  fi
  make_dir "$SHIM_TOP" 0755
  make_dir "$SHIM_DIR" 0755
  local d
  for d in "$SHIM_TOP" "$SHIM_DIR"; do
    # sudo runs the drop-in as root: whoever could replace it would be root
    if [ "$(stat -c %u "$d")" != 0 ] || [ -n "$(find "$d" -maxdepth 0 -perm /022)" ]; then
      chown root:root "$d"
      chmod go-w "$d"
      say "made $d root's alone (an old checkout?): the drop-in in it runs as root"
    fi
  done
  if [ -f "$SHIM" ] && ! grep -q 'drop-in for the legacy virsh-wrapper' "$SHIM"; then
    # the old script itself: keep it aside (not executable), never run it again
    mv "$SHIM" "$SHIM.legacy"
    chmod a-x "$SHIM.legacy"
    say "kept the old script as $SHIM.legacy"
  fi
  install_file "$REPO/bin/virsh_wrapper.sh" "$SHIM" 0755
}

install_sudoers() {
  local tmp
  tmp=$(mktemp)
  sed -e "s/^Defaults:wrapper /Defaults:$WRAPPER /" -e "s/^wrapper ALL/$WRAPPER ALL/" \
    "$REPO/sudoers.d/wirt" > "$tmp"
  if ! visudo -cqf "$tmp"; then
    rm -f "$tmp"
    die "the sudoers drop-in does not pass visudo -cf; nothing was changed"
  fi
  if [ -f "$SUDOERS" ] && cmp -s "$tmp" "$SUDOERS"; then
    rm -f "$tmp"
    return
  fi
  install_file "$tmp" "$SUDOERS" 0440
  rm -f "$tmp"
  if ! visudo -cq; then
    rm -f "$SUDOERS"
    die "sudo's whole configuration fails visudo -c with $SUDOERS; removed it again"
  fi
}

install_cron_and_rotation() {
  local tmp
  tmp=$(mktemp)
  sed -e "s/^\(\*\/2 \* \* \* \*\) wrapper /\1 $WRAPPER /" "$REPO/deploy/cron.d/wirt" > "$tmp"
  install_file "$tmp" "$CRON" 0644
  rm -f "$tmp"
  install_file "$REPO/logrotate.d/wirt" "$LOGROTATE" 0644
}

install_watch_service() {
  install_file "$REPO/deploy/$UNIT_NAME" "$UNIT" 0644
  if [ -d "$SYSTEMD_RUNNING" ]; then
    systemctl daemon-reload
    systemctl enable "$UNIT_NAME"
    systemctl restart "$UNIT_NAME"  # the new code, on an update
    say "enabled and started $UNIT_NAME (the watch service; cron passes exit at once beside it)"
  else
    say "no systemd here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)):" \
        "$UNIT is installed but not started;"
    say "  start the watch service as root: $EXE --watch (it stays in the foreground," \
        "e.g. nohup $EXE --watch >>$LOGDIR/watch.log 2>&1 &)"
    say "  until then the cron passes serve every 2 minutes"
  fi
}

uninstall_watch_service() {
  if [ -d "$SYSTEMD_RUNNING" ] && [ -e "$UNIT" ]; then
    systemctl disable --now "$UNIT_NAME" || say "could not stop $UNIT_NAME; going on"
  fi
  if [ -e "$UNIT" ]; then
    rm -f "$UNIT"
    [ ! -d "$SYSTEMD_RUNNING" ] || systemctl daemon-reload
    say "removed $UNIT"
  fi
}

install_config() {
  if [ ! -e "$PAM" ]; then
    install_file "$REPO/pam.d/wirt" "$PAM" 0644
    remember file "$PAM"
    remember_content "$PAM"
  elif ! cmp -s "$REPO/pam.d/wirt" "$PAM"; then
    say "kept your $PAM (it differs from pam.d/wirt)"
  fi
  make_dir "$ETC" 0755
  if [ ! -e "$CONFIG" ]; then
    local tmp
    tmp=$(mktemp)
    sed -e "s/^group = .*/group = \"$GROUP\"/" "$REPO/deploy/wirt.toml" > "$tmp"
    install_file "$tmp" "$CONFIG" 0644
    rm -f "$tmp"
    remember file "$CONFIG"
    remember_content "$CONFIG"
    say "wrote $CONFIG"
  else
    say "kept your $CONFIG"
    # the lock's old default sat in world-writable /run/lock, where any local user
    # could create it first and stop every pass (SECURITY.md row 14); the pass now
    # refuses it, so move the line this installer itself once wrote
    if grep -qx 'lock_file = "/run/lock/wirt.lock"' "$CONFIG"; then
      local untouched=0
      as_written "$CONFIG" && untouched=1
      sed -i 's|^lock_file = "/run/lock/wirt.lock"$|lock_file = "/run/wirt/wirt.lock"|' "$CONFIG"
      [ "$untouched" = 0 ] || remember_content "$CONFIG"  # still install's own file
      say "moved lock_file in $CONFIG from /run/lock (writable by anyone) to /run/wirt"
    fi
  fi
  make_dir "$LOGDIR" 0700
}

install_all() {
  [ -f "$REPO/wirt_wrapper/root/main.py" ] || die "run me from a wirt checkout ($REPO)"
  install_packages
  make_dir "$STATE" 0700
  install_accounts
  install_code
  install_executables
  install_config
  install_cron_and_rotation
  install_sudoers
  install_watch_service
  if ! command -v libvirtd >/dev/null; then
    say "note: no libvirtd on this host; passes will report libvirt unreachable"
  fi
  if [ ! -x /usr/sbin/sendmail ]; then
    say "note: no /usr/sbin/sendmail (no MTA): set [mail] in $CONFIG, or turn it off"
  fi
  say "installed: $EXE (cron: $CRON, as $WRAPPER; group $GROUP)"
}

# --- uninstall -------------------------------------------------------------
uninstall_all() {
  local path name page
  # first what lets a pass start, then (once a running pass is done) what it runs
  uninstall_watch_service
  rm -f "$SUDOERS" "$CRON" "$LOGROTATE"
  if [ -f "$LOCK" ]; then
    exec 9<"$LOCK"  # read-only: never create it (the pass wants it root-only, 0600)
    flock -w 120 9 || say "a pass still holds $LOCK after 2 minutes; going on"
  fi
  rm -f "$EXE" "$AUDIT" "$MIGRATE" "$SHIM" "$WIRT" "$COMPLETION"
  for page in "${MANPAGES[@]}"; do rm -f "$MANDIR/man${page##*.}/$page"; done
  rm -rf "$PREFIX"
  rmdir "$SHIM_DIR" "$SHIM_TOP" 2>/dev/null || true
  say "removed wirt's code, executables, sudoers, cron and logrotate files"
  [ "$PURGE" = 1 ] || { say "kept $CONFIG, $LOGDIR, $STATE and the accounts (--purge removes them)"; return 0; }
  purge_all
}

KEPT=()
kept() { KEPT+=("$1: $2"); }  # kept PATH-OR-NAME WHY: told at the end of --purge

# config_paths: "KEY PATH" for the root files wirt.toml places (defaults filled in)
config_paths() {
  [ -f "$CONFIG" ] || return 0
  /usr/bin/python3 -I - "$CONFIG" <<'PY' 2>/dev/null || true
import sys, tomllib
try:
    with open(sys.argv[1], "rb") as f:
        data = tomllib.load(f)
except (OSError, ValueError):
    sys.exit(0)
for key, default in (("audit_log", "/var/log/wirt/audit.log"),
                     ("state_dir", "/var/lib/wirt"), ("lock_file", "/run/wirt/wirt.lock")):
    value = data.get(key, default)
    if isinstance(value, str) and value.startswith("/") and value.isprintable():
        print(key, value)
PY
}

# purged PATH: whether PATH is inside a folder --purge removes with all it holds
purged() {
  local dir
  for dir in $(remembered dir); do
    case $dir in "$LOGDIR"|"$STATE") ;; *) continue ;; esac
    case $1 in "$dir"|"$dir"/*) return 0 ;; esac
  done
  return 1
}

purge_all() {
  local path name key
  # what the config places, read before the config may go
  while read -r key path; do
    [ -n "$path" ] && [ -e "$path" ] || continue
    purged "$path" && continue
    kept "$path" "$key in $CONFIG; made by passes, not by install"
  done < <(config_paths)

  for path in $(remembered file); do
    [ -e "$path" ] || continue
    if as_written "$path"; then
      rm -f "$path"
    elif [ -n "$(remembered sum | sed -n "s|^$path ||p")" ]; then
      kept "$path" "changed since install wrote it (yours now)"
    else
      kept "$path" "install wrote it, but kept no record of its content"
    fi
  done
  for path in "$CONFIG" "$PAM"; do
    [ -e "$path" ] || continue
    remembered file | grep -qxF "$path" || kept "$path" "it was there before install"
  done
  if [ -e "$SHIM.legacy" ]; then
    kept "$SHIM.legacy" "the old virsh_wrapper.sh, set aside by install"
  fi
  for name in $(remembered user); do
    if getent passwd "$name" >/dev/null; then
      if userdel -r "$name" 2>/dev/null || userdel "$name"; then
        say "removed user $name"
      else
        kept "user $name" "could not remove it (still logged in or running something?)"
      fi
    fi
  done
  for name in $(remembered uses-user); do
    getent passwd "$name" >/dev/null || continue
    remembered user | grep -qxF "$name" || kept "user $name" "it was there before install"
  done
  for name in $(remembered group); do
    getent group "$name" >/dev/null || continue
    local gid members
    gid=$(getent group "$name" | cut -d: -f3)
    members=$(getent group "$name" | cut -d: -f4)
    if [ -n "$members" ] || getent passwd | cut -d: -f4 | grep -qx "$gid"; then
      kept "group $name" "it still has members"
    else
      if groupdel "$name"; then say "removed group $name"; fi
    fi
  done
  for name in $(remembered uses-group); do
    getent group "$name" >/dev/null || continue
    remembered group | grep -qxF "$name" || kept "group $name" "it was there before install"
  done
  for path in $(remembered dir | sort -r); do
    [ -d "$path" ] || continue
    case $path in
      "$LOGDIR"|"$STATE") rm -rf "$path" ;;
      *) rmdir "$path" 2>/dev/null || kept "$path" "not empty (files install did not put there)" ;;
    esac
  done
  # the members' spools: wirt never deletes anything in a home (a stat, nothing opened)
  while IFS=: read -r name _ _ _ _ path _; do
    for key in wirt virsh; do
      [ -n "$path" ] && [ "$path" != / ] && [ -d "$path/$key" ] && [ ! -L "$path/$key" ] \
        || continue
      kept "$path/$key" "$name's spool (homes are never touched)"
    done
  done < <(getent passwd)
  rm -f "$MANIFEST"
  say "purged what install had created"
  if [ ${#KEPT[@]} -gt 0 ]; then
    say "kept (not install's to remove; remove them yourself if you want them gone):"
    printf '  %s\n' "${KEPT[@]}"
  fi
}

# sourced (the tests call single steps): define everything, run nothing
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  if [ "$MODE" = install ]; then install_all; else uninstall_all; fi
fi
