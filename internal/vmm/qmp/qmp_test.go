package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeQEMU serves QMP on a unix socket: greeting, capabilities, then
// scripted answers.
func fakeQEMU(t *testing.T, answer func(cmd string, id json.RawMessage) []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\n"))
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if json.Unmarshal(line, &req) != nil {
				return
			}
			for _, out := range answer(req.Execute, req.ID) {
				if out == "CLOSE" {
					return
				}
				c.Write([]byte(out + "\n"))
			}
		}
	}()
	return path
}

func TestExecute(t *testing.T) {
	path := fakeQEMU(t, func(cmd string, id json.RawMessage) []string {
		switch cmd {
		case "qmp_capabilities":
			return []string{`{"return": {}, "id": ` + string(id) + `}`}
		case "query-status":
			return []string{
				`{"event": "RESUME", "data": {}}`,
				`{"return": {"status": "running", "running": true}, "id": ` + string(id) + `}`,
			}
		case "bogus":
			return []string{`{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": ` + string(id) + `}`}
		case "quit":
			return []string{`{"return": {}, "id": ` + string(id) + `}`, "CLOSE"}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ret, err := c.Execute(ctx, "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Status string }
	if err := json.Unmarshal(ret, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status = %s, %v", ret, err)
	}
	select {
	case ev := <-c.Events():
		if ev.Name != "RESUME" {
			t.Errorf("event = %q, want RESUME", ev.Name)
		}
	case <-time.After(time.Second):
		t.Error("no RESUME event")
	}

	_, err = c.Execute(ctx, "bogus", nil)
	var qerr *Error
	if !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" {
		t.Fatalf("bogus: err = %v, want a CommandNotFound *Error", err)
	}

	if _, err := c.Execute(ctx, "quit", nil); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	if _, err := c.Execute(ctx, "query-status", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: err = %v, want ErrClosed", err)
	}
}

func TestDialGivesUpWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := Dial(ctx, filepath.Join(t.TempDir(), "absent.sock"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

func TestDialRejectsNonQMP(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello, not qmp\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := Dial(ctx, path); err == nil {
		t.Fatal("Dial accepted a socket that does not speak QMP")
	}
}
