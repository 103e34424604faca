#!/usr/bin/env bash
# supervisord event listener (scripts/up.sh): when a component dies, kill what is left of its
# process group. supervisord starts each program in a group of its own (pgid = its pid) but only
# signals that group when *it* stops the program; a component killed from outside would leave
# its children running beside the restarted one (gunicorn's workers still holding the port).
# The group of a dead pid cannot be reused while a member lives, so this is safe.
# Protocol: http://supervisord.org/events.html — stdout is the protocol, messages go to stderr.
set -u
while true; do
    printf 'READY\n'
    IFS= read -r header || exit 0
    len=${header##*len:}
    len=${len%% *}
    [[ "$len" =~ ^[0-9]+$ ]] || exit 1
    payload=""
    [[ "$len" -gt 0 ]] && { IFS= read -r -N "$len" payload || exit 0; }
    pid="" name=""
    for field in $payload; do
        case "$field" in
            pid:*) pid=${field#pid:} ;;
            processname:*) name=${field#processname:} ;;
        esac
    done
    if [[ "$pid" =~ ^[0-9]+$ && "$pid" -gt 1 ]] && kill -KILL -- "-$pid" 2>/dev/null; then
        echo "reap-group: killed what $name left running (process group $pid)" >&2
    fi
    printf 'RESULT 2\nOK'
done
