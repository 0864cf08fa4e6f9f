#!/usr/bin/env bash
# demo/run.sh -- wirt as its members use it, on libvirt's test driver (as root, Debian 12).
#
#   bash demo/run.sh          two demo members use the wirt command, one pass serves them
#   bash demo/run.sh --clean  remove what the demo made: its users (and their homes), its
#                             group, /etc/wirt/demo, /var/lib/wirt-demo
#
# No real VM is started or stopped: the domains live in a test-driver host file, which
# each pass reads afresh (so the demo runs exactly one pass).  The demo writes no cron
# line and no sudoers file: the pass is run here the way cron's `sudo virsh_wrapper`
# runs it.  Each member's `wirt` gets `--config /etc/wirt/demo/wirt.toml`, the demo's
# site config; on an installed host /etc/wirt/wirt.toml is the default.
#
# Not shown: `shutdown` / `reboot --mode acpi|agent`.  They need a guest that listens
# for the power button or runs an agent; the test driver has neither and answers those
# flags with "unsupported flags", which is libvirt's test driver, not wirt
# (tests/test_realvm.py runs them on a real QEMU guest).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${WIRT_VENV:-/opt/wirt-test}
GROUP=wirtdemo
MEMBERS=(demo-alice demo-bob)
ETC=/etc/wirt/demo
STATE=/var/lib/wirt-demo
MADE_ETC=$ETC/.made-etc-wirt  # the demo made /etc/wirt itself: --clean removes it if empty

[ "$(id -u)" = 0 ] || { echo "demo: run me as root" >&2; exit 1; }

clean() {
  local u
  for u in "${MEMBERS[@]}"; do
    if id "$u" >/dev/null 2>&1; then
      userdel -r "$u" 2>/dev/null || userdel "$u"
      echo "demo: removed user $u and its home"
    fi
  done
  if getent group "$GROUP" >/dev/null; then groupdel "$GROUP"; echo "demo: removed group $GROUP"; fi
  local etc_made=0
  [ -e "$MADE_ETC" ] && etc_made=1
  rm -rf "$ETC" "$STATE"
  echo "demo: removed $ETC and $STATE"
  if [ "$etc_made" = 1 ] && rmdir /etc/wirt 2>/dev/null; then echo "demo: removed /etc/wirt"; fi
  echo "demo: kept what tests/setup-host.sh set up (Debian packages, libvirtd, $VENV," \
       "/etc/pam.d/wirt): the test suite uses them too"
}

case ${1-} in
  --clean) clean; exit 0 ;;
  "") ;;
  *) echo "usage: bash demo/run.sh [--clean]" >&2; exit 64 ;;
esac

bash "$REPO/tests/setup-host.sh" >/dev/null

# --- the host: a group, two members, a site config, three domains --------------------
getent group "$GROUP" >/dev/null || groupadd "$GROUP"
for u in "${MEMBERS[@]}"; do
  id "$u" >/dev/null 2>&1 || useradd -m -G "$GROUP" -s /bin/bash "$u"
  rm -rf "/home/$u/wirt" "/home/$u/virsh" "/home/$u/.config/wirt"  # start over
done
[ -d /etc/wirt ] || { install -d -m 0755 /etc/wirt; install -d -m 0755 "$ETC"; touch "$MADE_ETC"; }
install -d -m 0755 "$ETC"
rm -rf "$STATE"  # root's records of the spools just reset: the audit log, the journal
install -d -m 0700 "$STATE"
# demo-alice-web is shut off (test:runstate 5), the other two run
cat > "$ETC/host.xml" <<XML
<node>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>demo-alice-web</name><memory>524288</memory><vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices><graphics type='vnc' port='5901' listen='127.0.0.1'/></devices>
    <test:runstate>5</test:runstate></domain>
  <domain type='test'><name>demo-alice-db</name><memory>1048576</memory><vcpu>2</vcpu>
    <os><type>hvm</type></os></domain>
  <domain type='test'><name>demo-bob-mail</name><memory>262144</memory><vcpu>1</vcpu>
    <os><type>hvm</type></os></domain>
</node>
XML
cat > "$ETC/wirt.toml" <<TOML
# wirt demo: libvirt's test driver, so nothing real is started or stopped.
group = "$GROUP"
uri = "test://$ETC/host.xml"
audit_log = "$STATE/audit.log"
lock_file = "$STATE/lock"
state_dir = "$STATE"
[mail]
enabled = false   # the demo users' and root's mailboxes stay quiet; see README "Mail"
TOML
chmod 0644 "$ETC/wirt.toml" "$ETC/host.xml"

# member USER ARGS...: show what USER types, then run it as USER (no privilege)
member() {
  local u=$1 rc=0
  shift
  echo "$u\$ wirt $*"
  (cd / && runuser -u "$u" -- env -i PATH="$VENV/bin:/usr/bin:/bin" LANG=C.UTF-8 \
      HOME="/home/$u" wirt --config "$ETC/wirt.toml" "$@") || rc=$?
  [ "$rc" = 0 ] || echo "(exit $rc)"
}
# by_hand USER SHELL-TEXT: a member writing into their spool without wirt
by_hand() {
  echo "$1\$ $2"
  (cd / && runuser -u "$1" -- sh -c "cd ~ && $2")
}
pass() {
  echo "root# virsh_wrapper --verbose   # what cron runs every 2 minutes, via sudo"
  "$VENV/bin/virsh_wrapper" --config "$ETC/wirt.toml" --verbose
}

echo "== demo-alice: her VM folders, and commands checked before anything is written =="
member demo-alice create web
member demo-alice create db
member demo-alice list
member demo-alice strat web
member demo-alice shutdown db --force
member demo-alice autostart web
member demo-alice status web

echo
echo "== files written by hand are judged by the pass, against the same table =="
by_hand demo-alice 'echo "--domain demo-bob-mail" > wirt/service/vm/db/shutdown'
by_hand demo-alice 'mkdir wirt/service/vm/notmine && touch wirt/service/vm/notmine/start'
member demo-bob create mail
member demo-bob suspend mail
by_hand demo-bob 'ln -s /etc/shadow wirt/service/vm/mail/reboot   # an attack'
by_hand demo-bob 'mkdir -p virsh/dom-mail && echo --disable > virsh/dom-mail/autostart   # legacy'

echo
echo "== demo-alice: wirt start web --wait, while the pass runs =="
# the pass starts once her command file is in place, as the next cron run would
(
  for _ in $(seq 300); do [ -e /home/demo-alice/wirt/service/vm/web/start ] && break; sleep 0.1; done
  pass > "$STATE/pass.out" 2>&1
) &
runner=$!
member demo-alice start web --wait --timeout 60
wait "$runner"
cat "$STATE/pass.out"

echo
echo "== what the members read back =="
member demo-alice list
member demo-alice status web
member demo-alice log web
member demo-alice log db
member demo-alice log notmine
member demo-alice history
member demo-bob log mail
member demo-bob log mail --layout legacy

echo
echo "== the same, as files: ~demo-alice/wirt =="
(cd /home/demo-alice && find wirt -mindepth 1 | sort | sed 's/^/  ~\//')
echo "-- ~/wirt/info/vm/web/status.xml"
cat /home/demo-alice/wirt/info/vm/web/status.xml
echo
echo "== the admin: what went wrong, from root's own audit log ($STATE/audit.log) =="
echo "root# wirt-audit --outcome rejected --outcome failed"
"$VENV/bin/wirt-audit" --config "$ETC/wirt.toml" --outcome rejected --outcome failed
echo
echo "demo: done. Run it again to start over; 'bash demo/run.sh --clean' removes what it made."
