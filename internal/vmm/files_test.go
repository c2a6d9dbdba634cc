package vmm

import (
	"slices"
	"testing"
)

func TestParseLoaderTrace(t *testing.T) {
	out := "\tlinux-vdso.so.1 (0x00007ffc5a3f2000)\n" +
		"\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f6a1c0b0000)\n" +
		"\tlibmissing.so.2 => not found\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6a1bc00000)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f6a1c2e4000)\n"
	want := []string{"/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if got := parseLoaderTrace(out); !slices.Equal(got, want) {
		t.Errorf("parseLoaderTrace =\n%q\nwant\n%q", got, want)
	}
}
