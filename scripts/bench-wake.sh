#!/bin/sh
# bench-wake.sh measures scale to zero: an instance of flick/demo that
# stands by after 1 s without connections is woken N times by an HTTP
# request to its published port, and each time the wait for the first byte
# of the answer is recorded (curl's time_starttransfer). Needs a running
# flickd (FLICK_HOST or the default socket) with flick/demo loaded, and
# port 8091 free. Usage: scripts/bench-wake.sh [N]
set -eu

n=${1:-20}
port=8091
flick=${FLICK:-flick}
name=wakebench$$
trap '$flick rm -f $name >/dev/null 2>&1 || true' EXIT INT TERM

state() { $flick inspect "$name" | sed -n 's/^ *"state": "\(.*\)",$/\1/p'; }

$flick run -d --name "$name" -p "$port:8080" --idle-standby 1s --ready "http://:8080/" flick/demo serve >/dev/null
samples=
for i in $(seq "$n"); do
	for _ in $(seq 300); do [ "$(state)" = standby ] && break; sleep 0.05; done
	[ "$(state)" = standby ] || { echo "bench-wake: $name did not stand by" >&2; exit 1; }
	t=$(curl -sS -o /dev/null -m 30 -w '%{time_starttransfer}' "http://127.0.0.1:$port/")
	samples="$samples $(awk -v t="$t" 'BEGIN {printf "%.1f", t * 1000}')"
	printf '\rwake %d/%d: %s ms ' "$i" "$n" "${samples##* }" >&2
done
printf '\r\033[2K' >&2
printf '%s\n' $samples | sort -n | awk '{v[NR]=$1} END {
	printf "%d wakes, ms to the first byte: min %.1f p50 %.1f p90 %.1f max %.1f\n", NR, v[1], v[int((NR+1)/2)], v[int(NR*0.9+0.5)], v[NR]
}'
