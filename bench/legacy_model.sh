#!/bin/bash
# legacy_model.sh - a model of the legacy virsh_wrapper.sh, FOR THE BENCHMARK ONLY.
#
# Written clean-room from the project notes on the old script, "What one run did" (the
# original script's code is not ours to copy and is not used here), so that
# bench/bench_pass.py --legacy can time "the legacy script" on the same
# machine, users and domains, in the same run as wirt. It is never installed
# and nothing in wirt calls it.
#
# It keeps every known flaw LEGACY.md lists, on purpose: it runs as root and
# writes into users' homes (mkdir of log/ and history/, the per-command log,
# following symlinks), passes file contents to virsh unparsed, stops the whole
# run at the first bad file, leaves unknown actions in place, and uses
# minute-resolution names. Run it ONLY against the benchmark's throw-away
# users, in a group of their own: never on a host with real users.
#
# Usage (as root): legacy_model.sh [GROUP [URI]]   (defaults: vmguests qemu:///system)
# SYSLOG_SOCKET, when set, is handed to logger as --socket (for a test: this
# project's machines run no syslog daemon); the original logged to /dev/log.

GROUP=${1:-vmguests}
URI=${2:-qemu:///system}
PATTERN='^[-/_.:[:alnum:][:space:]]*$'

stamp() {
    date +%d_%h_%y_%H.%M
}

notify() {
    if [ -n "$SYSLOG_SOCKET" ]; then
        logger --socket "$SYSLOG_SOCKET" -t virsh_wrapper "$1"
    else
        logger -t virsh_wrapper "$1"
    fi
    mail_admin "$1"
}

mail_admin() {
    # an empty stub in the original
    :
}

# 1. members: the fourth field of the group's line (primary members are missed)
for USERNAME in $(grep "^$GROUP:" /etc/group | cut -d: -f4 | tr ',' ' '); do
    # 2. hard-coded home base; log/ and history/ made as root
    HOME=/home/$USERNAME
    SPOOL=$HOME/virsh
    if [ ! -d "$SPOOL" ]; then
        continue
    fi
    mkdir -p "$SPOOL/log" "$SPOOL/history"

    # 3. the entries of ~/virsh
    while read -r ENTRY; do
        case "$ENTRY" in
            log|history)
                continue
                ;;
            dom-*)
                ;;
            *)
                mv "$SPOOL/$ENTRY" "$SPOOL/history/ERRORENTITY-$(stamp)"
                notify "moved $SPOOL/$ENTRY to history: unknown entry"
                continue
                ;;
        esac
        VM=${ENTRY#dom-}

        # 4. its files, oldest modification first
        while read -r FILE; do
            FILEPATH=$SPOOL/$ENTRY/$FILE
            # files only (LEGACY.md: "for each file")
            if [ ! -f "$FILEPATH" ]; then
                continue
            fi
            if ! echo "$FILE" | grep -q "$PATTERN"; then
                mv "$FILEPATH" "$SPOOL/history/ERRORFILE-$(stamp)"
                notify "bad file name in $SPOOL/$ENTRY, stopping"
                exit 1
            fi
            # grep -c '' counts a last line without a newline too
            if [ "$(grep -c '' "$FILEPATH")" -gt 1 ]; then
                mv "$FILEPATH" "$SPOOL/history/ERRORFILE-$(stamp)"
                notify "more than one line in $FILEPATH, stopping"
                exit 1
            fi
            CONTENT=$(cat "$FILEPATH")
            if ! echo "$CONTENT" | grep -q "$PATTERN"; then
                mv "$FILEPATH" "$SPOOL/history/ERRORFILE-$(stamp)"
                notify "bad content in $FILEPATH, stopping"
                exit 1
            fi
            ACTION=$FILE
            case "$ACTION" in
                start|destroy|autostart|shutdown)
                    # 5. minute resolution: same VM and action in one minute overwrite
                    STAMP=$(stamp)
                    # CONTENT unquoted: appended to the command line unparsed
                    virsh -c "$URI" "$ACTION" --domain "$USERNAME-$VM" $CONTENT \
                        > "$SPOOL/log/$STAMP-$USERNAME-$ENTRY-$ACTION.log" 2>&1 < /dev/null
                    mv "$FILEPATH" "$SPOOL/history/$STAMP-$ENTRY-$ACTION"
                    ;;
                *)
                    notify "unsupported action $ACTION for $USERNAME-$VM"
                    ;;
            esac
        done < <(ls -rt "$SPOOL/$ENTRY")
    done < <(ls "$SPOOL")
done
exit 0
