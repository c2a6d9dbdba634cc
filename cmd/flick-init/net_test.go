package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/flick-vm/flick/internal/guest/wire"
)

// TestRtentryLayout checks the hand-made struct against the kernel's
// struct rtentry on 64-bit Linux: 120 bytes, flags at 56, dev at 88.
func TestRtentryLayout(t *testing.T) {
	var rt rtentry
	if got := unsafe.Sizeof(rt); got != 120 {
		t.Errorf("sizeof(rtentry) = %d, want 120", got)
	}
	if got := unsafe.Offsetof(rt.flags); got != 56 {
		t.Errorf("offsetof(flags) = %d, want 56", got)
	}
	if got := unsafe.Offsetof(rt.dev); got != 88 {
		t.Errorf("offsetof(dev) = %d, want 88", got)
	}
	var hw ifreqHW
	if got := unsafe.Sizeof(hw); got != 40 {
		t.Errorf("sizeof(ifreq) = %d, want 40", got)
	}
}

func TestMaskOf(t *testing.T) {
	for _, tc := range []struct {
		bits int
		want [4]byte
	}{{16, [4]byte{255, 255, 0, 0}}, {24, [4]byte{255, 255, 255, 0}}, {29, [4]byte{255, 255, 255, 248}}, {8, [4]byte{255, 0, 0, 0}}} {
		if got := maskOf(tc.bits); got != tc.want {
			t.Errorf("maskOf(%d) = %v, want %v", tc.bits, got, tc.want)
		}
	}
}

func TestParseMAC(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want [6]byte
		ok   bool
	}{
		{"02:fc:0a:4d:00:05", [6]byte{2, 0xfc, 0x0a, 0x4d, 0, 5}, true},
		{"02:FC:0A:4D:00:05", [6]byte{2, 0xfc, 0x0a, 0x4d, 0, 5}, true},
		{"02:fc:0a:4d:00", [6]byte{}, false},
		{"02-fc-0a-4d-00-05", [6]byte{}, false},
		{"02:fc:0a:4d:00:0g", [6]byte{}, false},
		{"", [6]byte{}, false},
	} {
		got, ok := parseMAC(tc.in)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseMAC(%q) = %x, %v; want %x, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestWriteResolvConf(t *testing.T) {
	tests := []struct {
		name string
		net  wire.Net
		want string // "" for no file
	}{
		{"servers and search", wire.Net{DNS: []string{"10.77.0.1", "1.1.1.1"}, Search: "flick.internal"}, "nameserver 10.77.0.1\nnameserver 1.1.1.1\nsearch flick.internal\n"},
		{"server only", wire.Net{DNS: []string{"10.77.0.1"}}, "nameserver 10.77.0.1\n"},
		{"nothing to say", wire.Net{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := writeResolvConf(openTestRoot(t, dir), &tt.net); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(filepath.Join(dir, "etc/resolv.conf"))
			switch {
			case tt.want == "" && !errors.Is(err, fs.ErrNotExist):
				t.Errorf("resolv.conf = %q, %v; want none", got, err)
			case tt.want != "" && (err != nil || string(got) != tt.want):
				t.Errorf("resolv.conf = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
