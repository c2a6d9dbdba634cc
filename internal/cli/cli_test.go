package cli

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flick-vm/flick/api"
)

func TestRunPullsWhenNotFoundLocallyThenCreates(t *testing.T) {
	f := newFakeDaemon(t)
	ref := "127.0.0.1:5000/team/app:1.2"
	code, stdout, stderr := f.run("run", "-d", "--name", "web", ref)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	var got []string
	for _, c := range f.callList() {
		if !strings.HasPrefix(c, "GET") {
			got = append(got, c)
		}
	}
	want := []string{
		"POST /v1/instances",
		"POST /v1/images/pull",
		"POST /v1/instances",
		"POST /v1/instances/3f2a9c1e0b7d00015e6f/start",
	}
	if !slices.Equal(got, want) {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(stderr, "Digest: sha256:fb3e5f0c1a2b3c4d5e6f") {
		t.Errorf("pull progress not on stderr: %q", stderr)
	}
	wantOut := `name:       web
id:         3f2a9c1e0b7d
state:      running
image:      127.0.0.1:5000/team/app:1.2@sha256:fb3e5f0c1a2b
boot time:  312 ms   (image 0.1 · disk 2.3 · vmm 31 · kernel 198 · init 60 · app 1.2)
memory:     128 MiB · 1 vCPU
`
	if stdout != wantOut {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, wantOut)
	}
}

func TestRunPullError(t *testing.T) {
	f := newFakeDaemon(t)
	code, _, stderr := f.run("run", "-d", "127.0.0.1:5000/missing:1")
	if code != ExitFailure {
		t.Errorf("exit %d, want %d", code, ExitFailure)
	}
	if !strings.HasSuffix(stderr, "Error: image 127.0.0.1:5000/missing:1 not found in registry 127.0.0.1:5000\n") {
		t.Errorf("stderr %q", stderr)
	}
}

func TestRunAttachedExitCodeAndStreams(t *testing.T) {
	f := newFakeDaemon(t)
	f.addImage("app")
	f.exitCode = 3
	now := time.Now()
	f.logs = []api.LogRecord{
		{Time: now, Stream: "stdout", Log: "hello"},
		{Time: now, Stream: "stderr", Log: "oops\n"},
		{Time: now, Stream: "stdout", Log: "bye"},
	}
	code, stdout, stderr := f.run("run", "--rm", "-e", "A=1", "app", "ls", "-l", "--color")
	if code != 3 {
		t.Errorf("exit %d, want 3 (stderr %q)", code, stderr)
	}
	if stdout != "hello\nbye\n" {
		t.Errorf("stdout %q", stdout)
	}
	if stderr != "oops\n" {
		t.Errorf("stderr %q", stderr)
	}
	req := f.creates[0]
	if !slices.Equal(req.Cmd, []string{"ls", "-l", "--color"}) || req.AutoRemove || !slices.Equal(req.Env, []string{"A=1"}) {
		t.Errorf("create request %+v", req)
	}
	if calls := f.callList(); !slices.Contains(calls, "DELETE /v1/instances/3f2a9c1e0b7d00015e6f?force=true") {
		t.Errorf("no rm -f after wait; calls %v", calls)
	}
}

func TestRunDetachedRmIsAutoRemove(t *testing.T) {
	f := newFakeDaemon(t)
	f.addImage("app")
	if code, _, stderr := f.run("run", "-d", "--rm", "--memory", "1g", "--cpus", "2", "app"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	req := f.creates[0]
	if !req.AutoRemove || req.MemoryMiB != 1024 || req.CPUs != 2 {
		t.Errorf("create request %+v", req)
	}
}

func TestDaemonNotRunning(t *testing.T) {
	var stdout, stderr strings.Builder
	sock := filepath.Join(t.TempDir(), "flickd.sock")
	code := Run(t.Context(), []string{"--host", "unix://" + sock, "ps"}, &stdout, &stderr)
	if code != ExitFailure {
		t.Errorf("exit %d", code)
	}
	if !strings.HasPrefix(stderr.String(), "Error: cannot reach flickd at "+sock+": ") ||
		!strings.HasSuffix(stderr.String(), "(is flickd running? start it with: flickd)\n") {
		t.Errorf("stderr %q", stderr.String())
	}
}

func TestConflictIsPrinted(t *testing.T) {
	f := newFakeDaemon(t)
	f.addImage("app")
	f.run("create", "--name", "web", "app")
	code, _, stderr := f.run("create", "--name", "web", "app")
	if code != ExitFailure || !strings.HasPrefix(stderr, "Error: name web is in use by instance 3f2a9c1e0b7d\n") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

func TestPS(t *testing.T) {
	f := newFakeDaemon(t)
	f.addImage("app")
	f.exitCode = 3
	f.run("run", "-d", "--name", "web", "app")
	f.run("run", "--name", "job", "app", "sh", "-c", "exit 3")
	_, stdout, _ := f.run("ps", "-a")
	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("ps -a:\n%s", stdout)
	}
	for _, col := range []string{"ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "BOOT"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header %q lacks %s", lines[0], col)
		}
	}
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"web", []string{"3f2a9c1e0b7d", "app", `"/bin/app --serve"`, "3 minutes ago", "Up Less than a second", "312 ms"}},
		{"job", []string{`"/bin/app sh -c exit…"`, "Exited (3) Less than a second ago"}},
	} {
		var row string
		for _, l := range lines[1:] {
			if strings.Contains(l, " "+tc.name+" ") {
				row = l
			}
		}
		for _, w := range tc.want {
			if !strings.Contains(row, w) {
				t.Errorf("row of %s %q lacks %q", tc.name, row, w)
			}
		}
	}
	_, stdout, _ = f.run("ps")
	if n := strings.Count(stdout, "\n"); n != 2 {
		t.Errorf("ps without -a shows %d lines:\n%s", n, stdout)
	}
	_, stdout, _ = f.run("ps", "-a", "--json")
	var list []api.Instance
	if err := json.Unmarshal([]byte(stdout), &list); err != nil || len(list) != 2 {
		t.Errorf("ps --json: %v %q", err, stdout)
	}
}

func TestInspectJSON(t *testing.T) {
	f := newFakeDaemon(t)
	f.addImage("app")
	f.run("run", "-d", "--name", "web", "app")
	code, stdout, stderr := f.run("inspect", "web", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(stdout), &obj); err != nil {
		t.Fatalf("inspect prints %q: %v", stdout, err)
	}
	for _, k := range []string{"id", "name", "state", "image", "exit_code", "boot_ms", "phases"} {
		if _, ok := obj[k]; !ok {
			t.Errorf("inspect JSON lacks %q: %s", k, stdout)
		}
	}
	if obj["name"] != "web" || obj["state"] != "running" || obj["boot_ms"] != 312.0 {
		t.Errorf("inspect JSON %s", stdout)
	}

	// Not an instance: an image.
	_, stdout, _ = f.run("inspect", "app")
	var img api.Image
	if err := json.Unmarshal([]byte(stdout), &img); err != nil || img.Digest == "" {
		t.Errorf("inspect of an image: %v %q", err, stdout)
	}
	// Two names: an array.
	_, stdout, _ = f.run("inspect", "web", "app")
	var arr []map[string]any
	if err := json.Unmarshal([]byte(stdout), &arr); err != nil || len(arr) != 2 {
		t.Errorf("inspect of two names: %v %q", err, stdout)
	}
	code, _, stderr = f.run("inspect", "nope")
	if code != ExitFailure || stderr != "Error: no such instance or image: nope\n" {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

func TestBench(t *testing.T) {
	f := newFakeDaemon(t)
	f.addImage("app")
	code, stdout, stderr := f.run("bench", "-n", "3", "--json", "app")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var res benchResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("%v: %q", err, stdout)
	}
	if res.N != 3 || res.Image != "app" || res.Accel != "tcg" || res.RSSBytes != 35<<20 {
		t.Errorf("result %+v", res)
	}
	if got := res.Phases["overhead"]; got.P50 < 21.7 || got.P50 > 21.9 { // 312-31-198-60-1.2
		t.Errorf("overhead %+v", got)
	}
	if got := res.Phases["total"]; got.Max != 312 {
		t.Errorf("total %+v", got)
	}
	if len(f.instances) != 0 {
		t.Errorf("bench left %d instances", len(f.instances))
	}
	_, stdout, _ = f.run("bench", "-n", "2", "app")
	for _, w := range []string{"PHASE", "kernel", "total", "overhead", "198.0", "idle VM RSS: 35 MiB", "accel: tcg"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("bench table lacks %q:\n%s", w, stdout)
		}
	}
}

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name    string
		samples []float64
		want    stats
	}{
		{"one", []float64{5}, stats{5, 5, 5, 5}},
		{"ten", []float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5}, stats{1, 5, 9, 10}},
		{"twenty", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, stats{1, 10, 18, 20}},
		{"three", []float64{3, 1, 2}, stats{1, 2, 3, 3}},
		{"empty", nil, stats{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := summarize(tc.samples); got != tc.want {
				t.Errorf("summarize(%v) = %+v, want %+v", tc.samples, got, tc.want)
			}
		})
	}
}

func TestParseMemory(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr string
	}{
		{"256M", 256, ""},
		{"256m", 256, ""},
		{"1g", 1024, ""},
		{"1G", 1024, ""},
		{"512MiB", 512, ""},
		{"1.5g", 1536, ""},
		{"262144k", 256, ""},
		{"268435456", 256, ""},
		{"268435456b", 256, ""},
		{"256", 0, "less than 1 MiB"},
		{"lots", 0, "want a size such as 256M"},
		{"-1g", 0, "want a size such as 256M"},
		{"", 0, "want a size such as 256M"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseMemory(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("parseMemory(%q) = %d, %v; want error with %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseMemory(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestMemoryFlagError(t *testing.T) {
	f := newFakeDaemon(t)
	code, _, stderr := f.run("run", "--memory", "lots", "app")
	if code != ExitFailure || !strings.HasPrefix(stderr, `Error: --memory: invalid memory size "lots"`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	if len(f.callList()) != 0 {
		t.Errorf("a bad flag reached the daemon: %v", f.callList())
	}
}

func TestParseEnvFile(t *testing.T) {
	t.Setenv("FLICK_TEST_FROM_HOST", "host value")
	in := "# comment\n\nA=1\n  B=two words\nC=\nD=x=y\nFLICK_TEST_FROM_HOST\nFLICK_TEST_UNSET_XYZ\n"
	got, err := parseEnvFile(strings.NewReader(in), "f.env")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A=1", "B=two words", "C=", "D=x=y", "FLICK_TEST_FROM_HOST=host value"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"=x\n", "BAD KEY=1\n"} {
		if _, err := parseEnvFile(strings.NewReader(bad), "f.env"); err == nil || !strings.Contains(err.Error(), "f.env line 1") {
			t.Errorf("parseEnvFile(%q): err %v", bad, err)
		}
	}
}

func TestStatus(t *testing.T) {
	now := time.Now()
	started := now.Add(-2 * time.Minute)
	finished := now.Add(-5 * time.Second)
	code := 3
	for _, tc := range []struct {
		in   api.Instance
		want string
	}{
		{api.Instance{State: api.StateRunning, Started: &started}, "Up 2 minutes"},
		{api.Instance{State: api.StateExited, ExitCode: &code, Finished: &finished}, "Exited (3) 5 seconds ago"},
		{api.Instance{State: api.StateFailed, Error: "kernel panic\nmore"}, "Failed: kernel panic"},
		{api.Instance{State: api.StateCreated}, "Created"},
	} {
		if got := status(now, tc.in); got != tc.want {
			t.Errorf("status(%+v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
