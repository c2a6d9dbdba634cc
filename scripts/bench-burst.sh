#!/bin/sh
# bench-burst.sh starts N instances of IMAGE at once (layer in memory, so
# from the image's boot snapshot once it has one), then reports their
# start times (boot_ms: min, p50, p90, max) and, once they idle, the host
# memory each VMM takes (RSS and PSS). Needs a running flickd (FLICK_HOST
# or the default socket). Usage: scripts/bench-burst.sh [N] [IMAGE [CMD...]]
set -eu

n=${1:-100}
[ $# -gt 0 ] && shift
image=${1:-flick/busybox}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- sleep 100000
flick=${FLICK:-flick}
tag=burst$$
tmp=$(mktemp -d)
cleanup() {
	$flick ps -a --json | python3 -c 'import json,sys; [print(i["id"]) for i in json.load(sys.stdin) if i["name"].startswith(sys.argv[1])]' "$tag" |
		xargs -r -n 20 $flick rm -f >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# The image's boot snapshot first, so that the burst is of warm starts.
$flick run --rm --layer memory "$image" true >/dev/null
start=$(date +%s.%N)
for i in $(seq "$n"); do
	$flick run -d --layer memory --name "$tag-$i" "$image" "$@" >"$tmp/$i.out" 2>&1 &
done
wait
end=$(date +%s.%N)
failed=$(grep -L '^state: *running' "$tmp"/*.out | wc -l)
sleep 10 # let them idle
$flick ps -a --json | python3 -c '
import json, sys
tag, n, wall, failed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ins = [i for i in json.load(sys.stdin) if i["name"].startswith(tag)]
boot = sorted(i["boot_ms"] for i in ins if i["state"] == "running")
q = lambda p: boot[min(len(boot) - 1, int(p * len(boot)))] if boot else 0
rss, pss = [], []
for i in ins:
    if not i.get("pid"):
        continue
    rss.append(i.get("rss_bytes", 0))
    try:
        for line in open("/proc/%d/smaps_rollup" % i["pid"]):
            if line.startswith("Pss:"):
                pss.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
avg = lambda v: sum(v) / len(v) / 2**20 if v else 0
print("%d of %d running (%d failed) in %.1f s" % (len(boot), n, failed, wall))
print("boot_ms: min %.0f p50 %.0f p90 %.0f max %.0f" % (boot[0], q(0.5), q(0.9), boot[-1]) if boot else "none started")
print("idle VMM: RSS %.1f MiB, PSS %.1f MiB on average (%d VMs)" % (avg(rss), avg(pss), len(rss)))
' "$tag" "$n" "$(echo "$end - $start" | bc)" "$failed"
