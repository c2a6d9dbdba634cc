// Package e2e holds flick's end-to-end tests: they build nothing, but drive
// the binaries of `make build` (bin/flick, bin/flickd, bin/flick-init) the
// way a user does, against a real registry and real microVMs. They need
// root, QEMU and a guest kernel (FLICK_KERNEL, or `make kernel`) and skip
// with the reason when one is missing.
package e2e
