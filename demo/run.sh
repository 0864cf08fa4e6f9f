#!/usr/bin/env bash
# A self-contained demo of one wirt pass (as root on Debian 12):
# libvirt's test driver with a host file (no real VMs), two demo users in a
# demo group, a few commands waiting -- good ones, bad ones, an attack --
# then one pass through the real executable, and what the users read back.
# Run it again to start over: it resets the demo users' spools.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${WIRT_VENV:-/opt/wirt-test}
bash "$REPO/tests/setup-host.sh" >/dev/null

GROUP=wirtdemo
ETC=/etc/wirt/demo
STATE=/var/lib/wirt-demo
getent group "$GROUP" >/dev/null || groupadd "$GROUP"
for u in demo-alice demo-bob; do
  id "$u" >/dev/null 2>&1 || useradd -m -G "$GROUP" -s /bin/bash "$u"
  rm -rf "/home/$u/wirt" "/home/$u/virsh"
done
install -d -m 0755 "$ETC"
install -d -m 0700 "$STATE"
cat > "$ETC/host.xml" <<XML
<node>
  <domain type='test'><name>demo-alice-web</name><memory>524288</memory><vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices><graphics type='vnc' port='5901' listen='127.0.0.1'/></devices></domain>
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

as() { local u=$1; shift; runuser -u "$u" -- sh -c "$*"; }
as demo-alice 'mkdir -p ~/wirt/service/vm/web ~/wirt/service/vm/db ~/wirt/service/vm/notmine
  touch ~/wirt/service/vm/web/destroy; sleep 0.01
  echo "--graceful" > ~/wirt/service/vm/web/destroy; sleep 0.01
  touch ~/wirt/service/vm/web/autostart
  echo "--domain demo-bob-mail" > ~/wirt/service/vm/db/shutdown
  touch ~/wirt/service/vm/notmine/start'
as demo-bob 'mkdir -p ~/wirt/service/vm/mail
  touch ~/wirt/service/vm/mail/suspend
  ln -s /etc/shadow ~/wirt/service/vm/mail/reboot
  echo "--mode acpi" > ~/wirt/service/vm/mail/shutdown
  mkdir -p ~/virsh/dom-mail   # a legacy virsh-wrapper folder: served too
  echo "--disable" > ~/virsh/dom-mail/autostart'

echo "== one pass (as cron would run it, through the real executable) =="
"$VENV/bin/virsh_wrapper" --config "$ETC/wirt.toml" --verbose
for u in demo-alice demo-bob; do
  echo
  echo "== what $u reads back =="
  (cd "/home/$u" && find wirt -mindepth 1 | sort | sed 's/^/  ~\//')
  for log in /home/$u/wirt/logs/vm/*.log; do echo "-- ${log#/home/$u/}"; cat "$log"; done
done
echo
echo "== demo-bob's legacy folder (legacy/README.md) =="
(cd /home/demo-bob && find virsh -mindepth 1 | sort | sed 's/^/  ~\//')
for log in /home/demo-bob/virsh/log/*-dom-*.log; do echo "-- ${log#/home/demo-bob/}"; cat "$log"; done
echo
echo "== ~demo-alice/wirt/info/vm/web/status.xml =="
cat /home/demo-alice/wirt/info/vm/web/status.xml
echo "== root-only audit log: $STATE/audit.log (last 3 lines) =="
tail -n 3 "$STATE/audit.log"
