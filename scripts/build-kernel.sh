#!/bin/sh
# build-kernel.sh builds flick's guest kernels (uncompressed PVH vmlinux
# files) from Debian's linux-source tarball, guest/kernel/flick.config (a
# fragment on top of tinyconfig) and guest/kernel/patches/*.patch, in two
# variants: vmlinux, uniprocessor (CONFIG_SMP off), for guests of one vCPU,
# and vmlinux-smp for guests of more. Under TCG the uniprocessor kernel
# boots ~20% sooner: cold boot p50 526/419/482 ms against 652/540/600 with
# the SMP one, three alternating rounds of `flick bench --cold -n 10`.
#
# It caches both at ${XDG_CACHE_HOME:-$HOME/.cache}/flick/kernel/<key>/, points
# .../flick/kernel/vmlinux and vmlinux-smp at them and prints the path of
# vmlinux (flickd finds vmlinux-smp beside it). The key hashes the fragment,
# the patches, this script and the tarball's name and size, so a second run
# with the same inputs returns at once.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
src=${FLICK_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
fragment=$repo/guest/kernel/flick.config
patches=$(ls "$repo"/guest/kernel/patches/*.patch 2>/dev/null || true)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/flick/kernel

[ -f "$src" ] || { echo "build-kernel: $src missing (apt-get install linux-source-6.1)" >&2; exit 1; }
tarball="$(basename "$src") $(stat -c %s "$src")"
srckey=$({ echo "$tarball"; [ -z "$patches" ] || cat $patches; } | sha256sum | cut -c1-16)
key=$({ echo "$srckey"; cat "$fragment" "$0"; } | sha256sum | cut -c1-16)
out=$cache/$key

# Built for size (-Os), GCC inlines copies and clears of a size it does not
# know as REP MOVSB and REP STOSB, which QEMU's TCG runs one byte per pass
# through a translated block. A cold boot of flick/demo made 7.16 million
# such passes, 2.97 million of them copying the initramfs into place (counted
# with -d exec,nochain and a -dfilter of every REP in vmlinux). As calls to
# the kernel's memcpy and memset, which move 8 bytes a pass, they are 1.24
# million, and the unpack of a 2.9 MiB initramfs took 14.3-16.7 ms against
# 15.9-25.0 (6 boots each, interleaved).
kcflags=-mstringop-strategy=libcall

# build VARIANT NAME: build one variant of the kernel into $out/NAME.
# VARIANT "up" turns CONFIG_SMP off; "smp" takes the fragment as it is.
build() {
	variant=$1 name=$2
	build=$cache/build-$key-$variant
	rm -rf "$build"
	mkdir -p "$build"
	if [ "$variant" = up ]; then
		sed 's/^CONFIG_SMP=y$/# CONFIG_SMP is not set/' "$fragment" >"$build/fragment"
	else
		cp "$fragment" "$build/fragment"
	fi
	make -s -C "$srcdir" O="$build" ARCH=x86_64 tinyconfig >/dev/null
	(cd "$build" && "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$build/fragment" >/dev/null)
	make -s -C "$srcdir" O="$build" ARCH=x86_64 olddefconfig >/dev/null

	# tinyconfig's dependencies can drop an option without a word: check
	# that every wanted =y and every wanted "is not set" survived.
	missing=
	for opt in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=y$/\1/p' "$build/fragment"); do
		grep -qx "$opt=y" "$build/.config" || missing="$missing $opt"
	done
	for opt in $(sed -n 's/^# \(CONFIG_[A-Z0-9_]*\) is not set$/\1/p' "$build/fragment"); do
		! grep -q "^$opt=" "$build/.config" || missing="$missing !$opt"
	done
	if [ -n "$missing" ]; then
		echo "build-kernel: options not as wanted in $build/.config:$missing" >&2
		exit 1
	fi

	echo "build-kernel: building $out/$name" >&2
	make -s -C "$srcdir" O="$build" ARCH=x86_64 -j"$(nproc)" KCFLAGS="$kcflags" vmlinux >&2
	mkdir -p "$out"
	cp "$build/.config" "$out/config${name#vmlinux}"
	# Without its symbol table: QEMU's ELF loader reads and sorts it at
	# every start (spawn to QMP ready 48-53 ms with it, 41-43 ms without).
	strip -s -o "$out/$name.tmp" "$build/vmlinux"
	# The symbols stay beside it, for reading initcall_debug's addresses
	# and profiles of a boot.
	cp "$build/System.map" "$out/System.map${name#vmlinux}"
	mv "$out/$name.tmp" "$out/$name"
	rm -rf "$build"
}

if [ ! -f "$out/vmlinux" ] || [ ! -f "$out/vmlinux-smp" ]; then
	# The patched source tree, shared by every config.
	srcdir=$cache/src-$srckey
	if [ ! -f "$srcdir/.flick-ready" ]; then
		echo "build-kernel: unpacking $src" >&2
		rm -rf "$srcdir"
		mkdir -p "$srcdir"
		tar -xf "$src" -C "$srcdir" --strip-components=1
		for p in $patches; do
			patch -s -p1 -d "$srcdir" <"$p"
		done
		touch "$srcdir/.flick-ready"
	fi
	[ -f "$out/vmlinux" ] || build up vmlinux
	[ -f "$out/vmlinux-smp" ] || build smp vmlinux-smp
fi

for name in vmlinux vmlinux-smp; do
	ln -sfn "$key/$name" "$cache/$name.tmp"
	mv -T "$cache/$name.tmp" "$cache/$name"
done
echo "$out/vmlinux"
