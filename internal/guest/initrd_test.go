package guest

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// cpioFile is one entry read back from a newc archive.
type cpioFile struct {
	mode         uint32
	major, minor uint32
	data         []byte
}

// readCPIO parses a newc archive independently of the writer.
func readCPIO(t *testing.T, b []byte) map[string]cpioFile {
	t.Helper()
	out := map[string]cpioFile{}
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) {
			t.Fatalf("archive ends inside a header at %d", off)
		}
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		mode, size, major, minor, namesize := field(1), int(field(6)), field(9), field(10), int(field(11))
		nameStart := off + 110
		name := string(b[nameStart : nameStart+namesize-1])
		if b[nameStart+namesize-1] != 0 {
			t.Fatalf("name %q not NUL-terminated", name)
		}
		dataStart := align(nameStart + namesize)
		if name == "TRAILER!!!" {
			if rest := b[dataStart:]; len(bytes.Trim(rest, "\x00")) != 0 {
				t.Fatalf("%d bytes of garbage after the trailer", len(rest))
			}
			return out
		}
		out[name] = cpioFile{mode: mode, major: major, minor: minor, data: b[dataStart : dataStart+size]}
		off = align(dataStart + size)
	}
}

func TestBuildInitrd(t *testing.T) {
	dir := t.TempDir()
	init := filepath.Join(dir, "flick-init")
	// An odd length exercises the padding after the data.
	content := bytes.Repeat([]byte("init!"), 1001)
	if err := os.WriteFile(init, content, 0o755); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "cache")
	path, err := BuildInitrd(init, cache)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := filepath.Base(path), "initrd-"; len(got) != len("initrd-")+12+len(".cpio") || got[:7] != want {
		t.Errorf("initrd name %q, want initrd-<12 hex>.cpio", got)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	files := readCPIO(t, b)

	want := map[string]struct {
		mode         uint32
		major, minor uint32
	}{
		"init":        {0o100755, 0, 0},
		"dev":         {0o040755, 0, 0},
		"dev/console": {0o020600, 5, 1},
		"proc":        {0o040555, 0, 0},
		"sys":         {0o040555, 0, 0},
		"mnt":         {0o040755, 0, 0},
		"mnt/lower":   {0o040755, 0, 0},
		"mnt/data":    {0o040755, 0, 0},
		"newroot":     {0o040755, 0, 0},
	}
	for name, w := range want {
		f, ok := files[name]
		if !ok {
			t.Errorf("%s missing", name)
			continue
		}
		if f.mode != w.mode || f.major != w.major || f.minor != w.minor {
			t.Errorf("%s: mode %o dev %d,%d; want mode %o dev %d,%d", name, f.mode, f.major, f.minor, w.mode, w.major, w.minor)
		}
	}
	if len(files) != len(want) {
		t.Errorf("archive has %d entries, want %d", len(files), len(want))
	}
	if !bytes.Equal(files["init"].data, content) {
		t.Errorf("/init holds %d bytes, want the %d of the binary", len(files["init"].data), len(content))
	}

	// Same binary: same file, not rewritten.
	st1, _ := os.Stat(path)
	path2, err := BuildInitrd(init, cache)
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(path2)
	if path2 != path || !os.SameFile(st1, st2) {
		t.Errorf("second build gave %s, want the cached %s", path2, path)
	}
	// Another binary: another file.
	if err := os.WriteFile(init, []byte("other"), 0o755); err != nil {
		t.Fatal(err)
	}
	path3, err := BuildInitrd(init, cache)
	if err != nil {
		t.Fatal(err)
	}
	if path3 == path {
		t.Errorf("a different init reused %s", path)
	}
	entries, _ := os.ReadDir(cache)
	if len(entries) != 2 {
		t.Errorf("cache holds %d files, want 2 (no temporary files left)", len(entries))
	}
}

func TestBuildInitrdMissingBinary(t *testing.T) {
	_, err := BuildInitrd(filepath.Join(t.TempDir(), "nope"), t.TempDir())
	if err == nil {
		t.Fatal("BuildInitrd of a missing binary succeeded")
	}
}

func TestParseCPUMHz(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want int
	}{
		{"epyc", "processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.144\ncache size\t: 512 KB\ncpu MHz\t\t: 1.0\n", 2596144},
		{"none", "processor\t: 0\n", 0},
		{"garbage", "cpu MHz\t\t: fast\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseCPUMHz([]byte(tc.in)); got != tc.want {
				t.Errorf("parseCPUMHz = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestKernelCmdline(t *testing.T) {
	got := KernelCmdline(CmdlineOptions{TSCkHz: 2596144, Extra: []string{"x=1"}})
	want := "console=hvc0 quiet lapic_timer_period=4000000 rodata=off tsc_early_khz=2596144 pty.legacy_count=0 8250.nr_uarts=1 panic=-1 reboot=t no_timer_check noreplace-smp random.trust_cpu=on rdinit=/init qemu_fw_cfg.ioport=12@0x510:0:1:4 x=1"
	if got != want {
		t.Errorf("KernelCmdline =\n%s\nwant\n%s", got, want)
	}
	kvm := KernelCmdline(CmdlineOptions{TSCkHz: 1, Accel: "kvm"})
	if bytes.Contains([]byte(kvm), []byte("lapic_timer_period")) {
		t.Errorf("KVM cmdline %q sets the APIC timer's rate, which only QEMU's emulated APIC has", kvm)
	}
	if bytes.Contains([]byte(kvm), []byte("rodata=off")) {
		t.Errorf("KVM cmdline %q leaves the kernel's read-only data writable, which costs nothing to protect there", kvm)
	}
	if got := KernelCmdline(CmdlineOptions{TSCkHz: 1, Verbose: true}); bytes.Contains([]byte(got), []byte("quiet")) {
		t.Errorf("verbose cmdline %q has quiet", got)
	}
}

func TestDefaultKernelPath(t *testing.T) {
	t.Setenv("FLICK_KERNEL", "/k/vmlinux")
	if got := DefaultKernelPath(); got != "/k/vmlinux" {
		t.Errorf("with FLICK_KERNEL: %s", got)
	}
	t.Setenv("FLICK_KERNEL", "")
	t.Setenv("XDG_CACHE_HOME", "/c")
	if got := DefaultKernelPath(); got != "/c/flick/kernel/vmlinux" {
		t.Errorf("with XDG_CACHE_HOME: %s", got)
	}
}

func TestSMPKernel(t *testing.T) {
	dir := t.TempDir()
	up := filepath.Join(dir, "vmlinux")
	for _, p := range []string{up, filepath.Join(dir, "other")} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(up+"-smp", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, kernel, want string
	}{
		{name: "sibling", kernel: up, want: up + "-smp"},
		{name: "no sibling", kernel: filepath.Join(dir, "other"), want: filepath.Join(dir, "other")},
		{name: "missing kernel", kernel: filepath.Join(dir, "none"), want: filepath.Join(dir, "none")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SMPKernel(tt.kernel); got != tt.want {
				t.Errorf("SMPKernel(%s) = %s, want %s", tt.kernel, got, tt.want)
			}
		})
	}
}

func TestPruneInitrds(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"initrd-aaaaaaaaaaaa.cpio", "initrd-bbbbbbbbbbbb.cpio", ".initrd-123", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	keep := filepath.Join(dir, "initrd-bbbbbbbbbbbb.cpio")
	removed, err := PruneInitrds(dir, keep)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 || removed[0] != ".initrd-123" || removed[1] != "initrd-aaaaaaaaaaaa.cpio" {
		t.Errorf("removed %v, want the other initrd and the temporary file", removed)
	}
	var left []string
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if len(left) != 2 || left[0] != "initrd-bbbbbbbbbbbb.cpio" || left[1] != "notes.txt" {
		t.Errorf("left %v, want the kept initrd and the file that is not an initrd", left)
	}
}
