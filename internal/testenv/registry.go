package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// registryBinary is Debian's build of the Distribution registry.
const registryBinary = "docker-registry"

// StartRegistry runs a Distribution registry (Debian's docker-registry)
// on a free port of 127.0.0.1 with its storage in a temporary directory,
// waits until it answers GET /v2/, stops it when t ends and returns its
// address, "127.0.0.1:PORT". It skips t when the binary is missing.
func StartRegistry(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath(registryBinary)
	if err != nil {
		skip(t, "%s not found: apt-get install docker-registry", registryBinary)
	}
	dir := t.TempDir()
	// Another process can take the port between our probe and the
	// registry's bind: try a few ports before giving up.
	var lastErr error
	for range 3 {
		addr, err := freeAddr()
		if err != nil {
			t.Fatalf("registry: find a free port: %v", err)
		}
		if lastErr = startRegistry(t, bin, dir, addr); lastErr == nil {
			return addr
		}
	}
	t.Fatalf("registry: %v", lastErr)
	return ""
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port), nil
}

// lockedBuffer collects a child's output while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func startRegistry(t testing.TB, bin, dir, addr string) error {
	storage := filepath.Join(dir, "storage")
	config := filepath.Join(dir, "config-"+addr[len("127.0.0.1:"):]+".yml")
	yml := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: flick-testenv
`, storage, addr)
	if err := os.WriteFile(config, []byte(yml), 0o644); err != nil {
		return err
	}
	out := &lockedBuffer{}
	cmd := exec.Command(bin, "serve", config)
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/", nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("%s serve exited (%v) before answering on %s:\n%s", bin, err, addr, out.String())
		case <-ctx.Done():
			stop()
			return fmt.Errorf("%s serve did not answer GET http://%s/v2/ within 15s:\n%s", bin, addr, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("registry %s output:\n%s", addr, out.String())
		}
	})
	return nil
}
