package instance

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"

	"github.com/flick-vm/flick/api"
	"github.com/flick-vm/flick/internal/errdefs"
	"github.com/flick-vm/flick/internal/fsutil"
	"github.com/flick-vm/flick/internal/guest/wire"
)

func TestGuestArgs(t *testing.T) {
	img := api.ImageConfig{Entrypoint: []string{"/app"}, Cmd: []string{"serve"}}
	tests := []struct {
		name    string
		img     api.ImageConfig
		cfg     api.InstanceConfig
		want    []string
		wantErr bool
	}{
		{"image default", img, api.InstanceConfig{}, []string{"/app", "serve"}, false},
		{"cmd replaces cmd", img, api.InstanceConfig{Cmd: []string{"ls", "-l"}}, []string{"/app", "ls", "-l"}, false},
		{"entrypoint drops image cmd", img, api.InstanceConfig{Entrypoint: []string{"sh"}}, []string{"sh"}, false},
		{"entrypoint and cmd", img, api.InstanceConfig{Entrypoint: []string{"sh"}, Cmd: []string{"-c", "x"}}, []string{"sh", "-c", "x"}, false},
		{"cmd only image", api.ImageConfig{Cmd: []string{"sh"}}, api.InstanceConfig{}, []string{"sh"}, false},
		{"nothing to run", api.ImageConfig{}, api.InstanceConfig{}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := guestArgs(tt.img, tt.cfg)
			if tt.wantErr {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("err = %v, want invalid argument", err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("guestArgs = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in   string
		want syscall.Signal
		ok   bool
	}{
		{"TERM", syscall.SIGTERM, true}, {"SIGKILL", syscall.SIGKILL, true}, {"sigint", syscall.SIGINT, true},
		{"9", syscall.SIGKILL, true}, {"0", 0, false}, {"NOPE", 0, false}, {"", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSignal(tt.in)
			if tt.ok != (err == nil) || got != tt.want {
				t.Fatalf("ParseSignal(%q) = %v, %v", tt.in, got, err)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err class = %v, want invalid argument", err)
			}
		})
	}
}

func TestRandomName(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		n := randomName(func(s string) bool { return seen[s] })
		if seen[n] || !nameRE.MatchString(n) {
			t.Fatalf("randomName gave %q (seen %v)", n, seen[n])
		}
		seen[n] = true
	}
}

func TestLogWriterAndTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	notified := 0
	w, err := openLog(path, func() { notified++ })
	if err != nil {
		t.Fatal(err)
	}
	w.write("stdout", []byte("one\ntw"))
	w.write("stderr", []byte("err1\n"))
	w.write("stdout", []byte("o\nthree\npartial"))
	w.close()
	w.write("stdout", []byte("after close\n")) // dropped, no panic

	var got []string
	if _, err := readLog(path, 0, func(r api.LogRecord) error {
		got = append(got, r.Stream+":"+r.Log)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"stdout:one\n", "stderr:err1\n", "stdout:two\n", "stdout:three\n", "stdout:partial"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("records = %q, want %q", got, want)
	}
	if notified == 0 {
		t.Error("writer never notified")
	}
	off, err := tailOffset(path, 2)
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	readLog(path, off, func(r api.LogRecord) error { got = append(got, r.Log); return nil })
	if !reflect.DeepEqual(got, []string{"three\n", "partial"}) {
		t.Fatalf("tail 2 = %q", got)
	}
	if off, _ := tailOffset(path, 100); off != 0 {
		t.Fatalf("tail beyond start = %d, want 0", off)
	}
}

func TestLongLineIsCut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	w, err := openLog(path, func() {})
	if err != nil {
		t.Fatal(err)
	}
	w.write("stdout", bytes.Repeat([]byte("x"), maxLine+10))
	w.close()
	var sizes []int
	readLog(path, 0, func(r api.LogRecord) error { sizes = append(sizes, len(r.Log)); return nil })
	if !reflect.DeepEqual(sizes, []int{maxLine, 10}) {
		t.Fatalf("record sizes = %v", sizes)
	}
}

func TestSparseCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("middle"), 32<<20)
	f.WriteAt([]byte("tail"), 64<<20-4)
	f.Close()
	dst := filepath.Join(dir, "dst")
	if err := fsutil.CopySparse(src, dst, false); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs from source")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 8<<20 {
		t.Errorf("copy uses %d bytes of disk: holes were filled", st.Blocks*512)
	}
	if _, err := os.Stat(dst + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Error("temporary file left behind")
	}
}

func TestKernelForCPUs(t *testing.T) {
	tests := []struct {
		name      string
		kernelSMP string
		c         api.InstanceConfig
		want      string
	}{
		{name: "one vCPU", kernelSMP: "/k/vmlinux-smp", c: api.InstanceConfig{CPUs: 1}, want: "/k/vmlinux"},
		{name: "two vCPUs", kernelSMP: "/k/vmlinux-smp", c: api.InstanceConfig{CPUs: 2}, want: "/k/vmlinux-smp"},
		{name: "two vCPUs, no SMP kernel", c: api.InstanceConfig{CPUs: 2}, want: "/k/vmlinux"},
		{name: "own kernel", kernelSMP: "/k/vmlinux-smp", c: api.InstanceConfig{CPUs: 4, Kernel: "/mine"}, want: "/mine"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Manager{cfg: Config{Kernel: "/k/vmlinux", KernelSMP: tt.kernelSMP}}
			if got := m.kernel(tt.c); got != tt.want {
				t.Errorf("kernel = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestImageOnly(t *testing.T) {
	img := api.ImageConfig{
		Entrypoint: []string{"/app"}, Cmd: []string{"serve"},
		Env:  []string{"LANG=C", "PATH=/opt/bin:/bin"},
		User: "app", WorkingDir: "/srv",
	}
	net := &wire.Net{Address: "10.77.0.9/16"}
	c := wire.Config{
		ID: "0123", Hostname: "web", Args: []string{"/app", "--token=s3cret"},
		Env: []string{"PATH=/bin", "TOKEN=s3cret"}, User: "root", WorkingDir: "/tmp",
		RootDevice: "root", RootFSType: "erofs", DataDevice: "data", WritableLayer: wire.LayerMemory,
		NoAgent: true, Net: net,
	}
	got := imageOnly(c, img)
	want := wire.Config{
		Args: []string{"/app", "serve"}, Env: []string{"PATH=/opt/bin:/bin"}, User: "app", WorkingDir: "/srv",
		RootDevice: "root", RootFSType: "erofs", DataDevice: "data", WritableLayer: wire.LayerMemory,
		NoAgent: true, Net: net,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("imageOnly =\n%+v\nwant\n%+v", got, want)
	}
	// An image with no command and no PATH gives none.
	if got := imageOnly(c, api.ImageConfig{}); got.Args != nil || got.Env != nil || got.User != "" {
		t.Errorf("imageOnly of an empty image config: args %q env %q user %q", got.Args, got.Env, got.User)
	}
}
