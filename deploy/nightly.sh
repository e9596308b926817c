#!/bin/sh
# The nightly inventory in one script: scan, diff against the previous night, write the
# report and the metrics, and alert through --fail-on. Run it from cron or a systemd timer
# (README, "The nightly inventory"); tests/test_nightly.py runs it for real, twice.
#
#   deploy/nightly.sh TARGETS DIR [certscan scan flags...]
#
# DIR keeps one result file per night (NIGHT.jsonl, NIGHT from $NIGHT or today's UTC date),
# the night's changes (NIGHT.changes.jsonl), report.html, report.csv and certscan.prom (for
# node_exporter's textfile collector: point $METRICS elsewhere to write it there).
# Exit status: 0 nothing to act on; 3 a --fail-on condition held (the counts are on
# stderr: cron mails them, systemd keeps them in the journal); anything else, a failure.
set -u
targets=$1
dir=$2
shift 2
night=${NIGHT:-$(date -u +%Y-%m-%d)}
fail_on=${FAIL_ON:-changed,expired,untrusted,expiring:14d}
metrics=${METRICS:-$dir/certscan.prom}
certscan=${CERTSCAN:-certscan}
mkdir -p "$dir" || exit 1
today=$dir/$night.jsonl

# The scan's own status: 0, or 128+N when stopped; its records are kept either way.
"$certscan" scan "$targets" -o "$today" -q "$@"
status=$?
[ "$status" -eq 0 ] || exit "$status"

# The previous night: the newest result file before this one (none on the first night).
previous=$(ls "$dir"/*.jsonl 2>/dev/null | grep -v '\.changes\.jsonl$' | sort \
    | grep -B1 -x "$today" | grep -v -x "$today" | tail -n 1)
if [ -n "$previous" ]; then
    "$certscan" diff "$previous" "$today" -o "$dir/$night.changes.jsonl" --fail-on "$fail_on"
    alert=$?
else  # the first night: nothing to compare with; the other conditions still hold
    first=$(echo "$fail_on" | tr ',' '\n' | grep -v -x changed | paste -s -d, -)
    alert=0
    if [ -n "$first" ]; then
        "$certscan" report "$today" -q --fail-on "$first"
        alert=$?
    fi
fi
case $alert in 0|3) ;; *) exit "$alert" ;; esac
"$certscan" report "$today" -q --html "$dir/report.html" --csv "$dir/report.csv" || exit 1
"$certscan" metrics "$today" -o "$metrics" || exit 1
exit "$alert"
