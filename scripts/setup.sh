#!/bin/sh
# setup.sh takes a fresh Debian 12 machine to a running flick: it installs
# the dependencies, builds flick and its guest kernel, installs the binaries
# into /usr/local/bin, (re)starts flickd in the background and runs the demo.
# Run it as root from anywhere in the checkout:
#
#	sudo scripts/setup.sh
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
root=${FLICK_ROOT:-/var/lib/flick}
sock=${FLICK_SOCKET:-/run/flick/flickd.sock}
log=${FLICK_LOG:-/var/log/flickd.log}
prefix=${PREFIX:-/usr/local}
pidfile=$(dirname "$sock")/flickd.pid

say() { printf '==> %s\n' "$*"; }
die() { echo "setup: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: flickd needs root for VMs, disks and TAP devices (sudo $0)"
cd "$repo"

say "installing dependencies"
scripts/deps.sh

say "building flick and the guest kernels (the first kernel builds take about 8 minutes on 2 cores)"
make build kernel
kernel=$(readlink -f "${FLICK_KERNEL:-${XDG_CACHE_HOME:-$HOME/.cache}/flick/kernel/vmlinux}")
[ -f "$kernel" ] || die "no guest kernel at $kernel after make kernel"

say "installing bin/* into $prefix/bin"
install -d "$prefix/bin"
for f in bin/flick bin/flickd bin/flick-init; do
	[ -f "$f" ] || die "$f missing after make build"
	install -m 0755 "$f" "$prefix/bin/"
done

# The pid of the flickd serving $sock: from our pid file, else from the
# listener of the socket.
running_pid() {
	if [ -f "$pidfile" ]; then
		pid=$(cat "$pidfile")
		if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q flickd "/proc/$pid/cmdline" 2>/dev/null; then
			echo "$pid"
			return
		fi
	fi
	[ -S "$sock" ] || return 0
	ss -Hxlp src "$sock" 2>/dev/null | sed -n 's/.*"flickd",pid=\([0-9]*\).*/\1/p' | head -n1
}

pid=$(running_pid)
if [ -n "$pid" ]; then
	say "stopping the flickd already running on $sock (pid $pid)"
	kill -TERM "$pid"
	i=0
	while kill -0 "$pid" 2>/dev/null; do
		i=$((i + 1))
		[ $i -le 100 ] || { kill -KILL "$pid" 2>/dev/null || true; break; }
		sleep 0.1
	done
fi

say "starting flickd (root $root, socket $sock, log $log)"
mkdir -p "$root" "$(dirname "$sock")" "$(dirname "$log")"
rm -f "$sock"
nohup "$prefix/bin/flickd" --root "$root" --socket "$sock" \
	--kernel "$kernel" --init "$prefix/bin/flick-init" </dev/null >>"$log" 2>&1 &
echo $! >"$pidfile"

FLICK_HOST=unix://$sock
export FLICK_HOST
i=0
until [ -S "$sock" ] && "$prefix/bin/flick" ps >/dev/null 2>&1; do
	kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -n 20 "$log" >&2; die "flickd exited; see $log"; }
	i=$((i + 1))
	[ $i -le 150 ] || { tail -n 20 "$log" >&2; die "flickd did not answer on $sock within 15s; see $log"; }
	sleep 0.1
done

say "building and loading the demo image flick/demo:latest"
go run ./scripts/mkimage -o bin/demo.tar -tag flick/demo:latest ./examples/hello
"$prefix/bin/flick" load -i bin/demo.tar

say "running it: flick run --rm flick/demo:latest"
"$prefix/bin/flick" run --rm flick/demo:latest

cat <<NEXT

flick is ready. flickd runs in the background (pid $(cat "$pidfile"), log $log).
Point the CLI at it (this is also its default):

    export FLICK_HOST=unix://$sock

Then try:

    flick run --rm flick/demo:latest hello world     # a VM per command
    flick run -d --name demo flick/demo:latest serve  # a long-running VM
    flick ps; flick logs demo; flick inspect demo --json
    flick bench flick/demo:latest -n 10              # boot time, phase by phase
    flick stop demo; flick rm demo

Tests: make test (unit, QEMU integration and end-to-end tests).
NEXT
