#!/usr/bin/env bash
# The hotswap demo (`make demo`): boot the test guest in a daemon VM (2 vCPUs), show its status lines, upgrade the
# VMM live three times, and show after each upgrade that the guest went on (same boot, sequence numbers and
# counters continuing, memory integrity ok) and how long it was paused. Then stop the VM. Takes ~15 s.
#
#   examples/demo.sh            (after scripts/bootstrap; `make demo` runs both)
#
# The VM lives in a private HOTSWAP_RUN_DIR, so the demo neither sees nor touches other VMs. Its VMM processes (the
# first one and every successor) carry a tag in their environment; on any exit the trap kills each of them by pid.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=$("$repo/scripts/python")
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
HOTSWAP_RUN_DIR=$(mktemp -d /tmp/hotswap-demo.XXXXXX)
export HOTSWAP_RUN_DIR
name=demo
upgrades=3
console="$HOTSWAP_RUN_DIR/$name.console.log"
tag="hotswap-demo-$$-$RANDOM"
kernel="$repo/guest/build/testguest.elf"
cmdline="uart=mmio:0xd0000000 ws=64M"

vmm_pids() { # every process that has the demo's tag: the VMM and any successor, whoever started it
    grep -lzxF "HOTSWAP_DEMO_TAG=$tag" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 || true
}
cleanup() {
    local pid
    for pid in $(vmm_pids); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$HOTSWAP_RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

hotswap() { "$python" -m hotswap "$@"; }
step() { printf '\n\033[1m$ hotswap %s\033[0m\n' "$*"; }
note() { printf '\033[2m# %s\033[0m\n' "$*"; }
fail() {
    printf '\ndemo: FAILED: %s\n' "$*" >&2
    exit 1
}

# Complete status lines only (each ends in \r\n; a line still being written has no \r yet).
status_lines() { grep -a '^hsg: status ' "$console" 2>/dev/null | grep -a $'\r$' | tr -d '\r' || true; }
ms() { awk -v us="$1" 'BEGIN { printf "%.1f", us / 1000 }'; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
last_seq() {
    local line
    line=$(status_lines | tail -n 1)
    [ -n "$line" ] && field seq "$line" || echo 0
}
wait_statuses() { # COUNT AFTER_SEQ: wait until COUNT status lines with seq > AFTER_SEQ exist
    local deadline=$((SECONDS + 20))
    until [ "$(status_lines | awk -v after="$2" '{ for (i = 3; i <= NF; i++) if ($i ~ /^seq=/) { split($i, kv, "="); if (kv[2] + 0 > after) n++ } } END { print n + 0 }')" -ge "$1" ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "no status lines after seq $2 within 20 s; console:\n$(tail -n 5 "$console")"
        sleep 0.05
    done
}
show_statuses_after() { # AFTER_SEQ COUNT
    status_lines | awk -v after="$1" -v count="$2" '{ for (i = 3; i <= NF; i++) if ($i ~ /^seq=/) { split($i, kv, "="); if (kv[2] + 0 > after && shown < count) { print "  " $0; shown++ } } }'
}
check_guest() { # the guest went on: one boot, status lines numbered without a gap or a repeat, integrity ok
    local boots seqs
    boots=$(grep -ac '^hsg: boot ' "$console" || true)
    [ "$boots" -eq 1 ] || fail "the guest booted $boots times"
    seqs=$(status_lines | sed -n 's/.* seq=\([0-9]*\) .*/\1/p')
    awk 'NR > 1 && $1 != prev + 1 { exit 1 } { prev = $1 }' <<<"$seqs" || fail "status lines were lost or repeated"
    [ "$(status_lines | grep -c 'integrity=FAIL' || true)" -eq 0 ] ||
        fail "the guest found corrupted memory: $(grep -a 'integrity FAIL' "$console" || true)"
}

[ -f "$kernel" ] || fail "$kernel is missing: run scripts/bootstrap (or make demo)"
[ -w /dev/kvm ] || fail "/dev/kvm is missing or not writable: hotswap needs KVM"

printf '\033[1mhotswap demo\033[0m: the test guest keeps every vCPU busy in ring 3 rewriting and checking 64 MiB of\n'
printf 'memory, counts timer interrupts, and prints a status line every 100 ms. Its VMM is replaced three times.\n'

step "run --daemon --name $name --kernel ${kernel#"$repo"/} --cpus 2 --mem 256M --cmdline '$cmdline' --console-log $console"
HOTSWAP_DEMO_TAG=$tag hotswap run --daemon --name "$name" --kernel "$kernel" --cpus 2 --mem 256M \
    --cmdline "$cmdline" --console-log "$console"
wait_statuses 5 0
note "the guest's console:"
grep -a '^hsg: ' "$console" | grep -av '^hsg: status ' | tr -d '\r' | sed 's/^/  /'
show_statuses_after 0 5

step ls
hotswap ls

downtimes=()
for round in $(seq 1 "$upgrades"); do
    before=$(last_seq)
    step "upgrade $name"
    result=$(hotswap upgrade "$name")
    echo "$result"
    downtime=$(sed -n 's/.*downtime \([0-9]*\) us.*/\1/p' <<<"$result")
    [ -n "$downtime" ] || fail "upgrade $round printed no downtime"
    downtimes+=("$downtime")
    after=$(last_seq) # the upgrade is complete when the command returns: later lines come from the new VMM's guest
    wait_statuses 3 "$after"
    note "the guest after upgrade $round:"
    show_statuses_after "$after" 3
    check_guest
    # The status line whose interval spans the pause reports it as its gap_us (plus the host's own noise).
    gap=$(show_statuses_after "$before" $((after - before + 3)) | sed -n 's/.* gap_us=\([0-9]*\).*/\1/p' | sort -n | tail -n 1)
    note "sequence continues, integrity ok; VMM downtime $(ms "$downtime") ms;" \
        "longest stall the guest measured across the upgrade: $(ms "$gap") ms"
done

step ls
hotswap ls

step "stop $name"
hotswap stop "$name"
deadline=$((SECONDS + 10))
while [ -n "$(vmm_pids)" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the VMM did not exit within 10 s of hotswap stop"
    sleep 0.1
done

lines=$(status_lines | wc -l)
printf '\n\033[1mdone\033[0m: %d live upgrades (VMM downtime %s us); the guest booted once and printed %d status lines,\n' \
    "$upgrades" "$(
        IFS=,
        echo "${downtimes[*]}"
    )" "$lines"
printf 'numbered without a gap, with integrity=ok throughout.\n'
