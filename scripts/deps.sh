#!/bin/sh
# deps.sh installs what flick needs to build and test on Debian 12: QEMU,
# the kernel source and its build tools, the disk image tools, busybox and a
# registry for the tests. It is quiet, needs no input, and does nothing when
# everything is already there. Go is not installed: Debian's is too old;
# the script checks for Go 1.26 or later and says so if it is missing.
set -eu

min_go=1.26
packages="qemu-system-x86 linux-source-6.1 build-essential flex bison libelf-dev
libssl-dev bc cpio xz-utils erofs-utils e2fsprogs busybox-static
docker-registry iproute2 wrk curl"

die() { echo "deps: $*" >&2; exit 1; }

missing=
for p in $packages; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
	[ "$status" = installed ] || missing="$missing $p"
done

if [ -n "$missing" ]; then
	sudo=
	if [ "$(id -u)" != 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "need root to install$missing (run as root or install sudo)"
		sudo="sudo -n"
	fi
	echo "deps: installing$missing" >&2
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq </dev/null >/dev/null || die "apt-get update failed"
	# shellcheck disable=SC2086 # word splitting of $missing is intended
	$sudo apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 $missing </dev/null >/dev/null ||
		die "apt-get install$missing failed"
fi

command -v go >/dev/null 2>&1 ||
	die "go not found: install Go $min_go or later from https://go.dev/dl/ and put it on PATH (Debian 12's golang is too old)"
have=$(go env GOVERSION 2>/dev/null | sed -n 's/^go\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
[ -n "$have" ] || die "cannot tell the version of $(command -v go): need Go $min_go or later"
if [ "$(printf '%s\n%s\n' "$min_go" "$have" | sort -t. -k1,1n -k2,2n | head -n1)" != "$min_go" ]; then
	die "$(command -v go) is go$have: need Go $min_go or later (https://go.dev/dl/)"
fi
