#!/bin/sh
# bench-net.sh measures HTTP through a published port with wrk: the demo
# app's server in a flick VM against the same binary run on the host, each
# reached two ways: from another host (a network namespace joined to this
# one by a veth pair, so the kernel's DNAT path) and from the host itself
# through 127.0.0.1 (flickd's port proxy). Needs root, wrk, a running
# flickd (FLICK_HOST or the default socket) with flick/demo loaded, and
# port 8080 free. Usage: scripts/bench-net.sh [SECONDS] [CONNECTIONS]
set -eu

secs=${1:-10}
conns=${2:-16}
ns=flickbench$$
port=8080
flick=${FLICK:-flick}
tmp=$(mktemp -d)

cleanup() {
	[ -n "${hostpid:-}" ] && kill "$hostpid" 2>/dev/null || true
	$flick rm -f netbench >/dev/null 2>&1 || true
	ip netns del "$ns" 2>/dev/null || true
	ip link del vbench$$ 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

command -v wrk >/dev/null || { echo "bench-net: wrk not found: apt-get install wrk" >&2; exit 1; }
cd "$(dirname "$0")/.."
CGO_ENABLED=0 go build -o "$tmp/hello" ./examples/hello

# The other host: 172.31.250.2, reaching this one at 172.31.250.1.
ip netns add "$ns"
ip link add vbench$$ type veth peer name eth0 netns "$ns"
ip addr add 172.31.250.1/24 dev vbench$$
ip link set vbench$$ up
ip -n "$ns" addr add 172.31.250.2/24 dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set lo up

# run LABEL: wrk from the other host and from this one.
run() {
	ip netns exec "$ns" wrk -t2 -c"$conns" -d"${secs}s" --latency "http://172.31.250.1:$port/" >"$tmp/$1-remote"
	wrk -t2 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/" >"$tmp/$1-local"
}

"$tmp/hello" serve >/dev/null 2>&1 &
hostpid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
run host
kill "$hostpid"
wait "$hostpid" 2>/dev/null || true
hostpid=

$flick run -d --name netbench -p "$port:8080" --ready "http://:8080/" flick/demo serve >/dev/null
run vm
$flick rm -f netbench >/dev/null

# field FILE: requests/s, p50, p99 (wrk prints latencies with units).
field() {
	awk '/Requests\/sec/ {rps=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {printf "%s\t%s\t%s", rps, p50, p99}' "$1"
}
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }

printf 'path\tserver\trequests/s\tp50\tp99\n'
for path in remote local; do
	for who in host vm; do
		printf '%s\t%s\t%s\n' "$path" "$who" "$(field "$tmp/$who-$path")"
	done
	printf '%s\tratio vm/host\t%s\n' "$path" "$(awk -v a="$(rps "$tmp/vm-$path")" -v b="$(rps "$tmp/host-$path")" 'BEGIN {printf "%.3f", a/b}')"
done
