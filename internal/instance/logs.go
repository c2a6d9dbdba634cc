package instance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"github.com/flick-vm/flick/api"
)

// maxLine is where a line with no newline is cut into a record of its own.
const maxLine = 16 << 10

// logWriter turns the app's output into api.LogRecord lines in app.log,
// one record per line of output, each with the time it arrived.
type logWriter struct {
	mu      sync.Mutex
	f       *os.File
	partial map[string][]byte
	notify  func()
}

func openLog(path string, notify func()) (*logWriter, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	return &logWriter{f: f, partial: map[string][]byte{}, notify: notify}, nil
}

func (w *logWriter) write(stream string, p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return
	}
	now := time.Now().UTC()
	buf := append(w.partial[stream], p...)
	var out bytes.Buffer
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 && len(buf) < maxLine {
			break
		}
		n := i + 1
		if i < 0 {
			n = maxLine
		}
		w.encode(&out, now, stream, buf[:n])
		buf = buf[n:]
	}
	w.partial[stream] = append([]byte(nil), buf...)
	if out.Len() > 0 {
		_, _ = w.f.Write(out.Bytes())
		w.notify()
	}
}

func (w *logWriter) encode(out *bytes.Buffer, t time.Time, stream string, line []byte) {
	b, _ := json.Marshal(api.LogRecord{Time: t, Stream: stream, Log: string(line)})
	out.Write(b)
	out.WriteByte('\n')
}

// close writes out any unterminated lines and closes the file.
func (w *logWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.f == nil {
		return
	}
	var out bytes.Buffer
	for _, s := range []string{"stdout", "stderr"} {
		if len(w.partial[s]) > 0 {
			w.encode(&out, time.Now().UTC(), s, w.partial[s])
		}
	}
	_, _ = w.f.Write(out.Bytes())
	_ = w.f.Close()
	w.f = nil
	w.notify()
}

// LogOptions selects what Logs sends.
type LogOptions struct {
	Follow bool
	Tail   int // < 0: all
	Stdout bool
	Stderr bool
}

// readLog calls fn for each complete record in path from offset on and
// returns the offset after the last one.
func readLog(path string, offset int64, fn func(api.LogRecord) error) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return offset, nil
	}
	if err != nil {
		return offset, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return offset, err
	}
	r := bufio.NewReaderSize(f, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) == 0 || line[len(line)-1] != '\n' {
			return offset, nil // EOF or a record still being written
		}
		offset += int64(len(line))
		var rec api.LogRecord
		if json.Unmarshal(line, &rec) == nil {
			if ferr := fn(rec); ferr != nil {
				return offset, ferr
			}
		}
		if err != nil {
			return offset, nil
		}
	}
}

// tailOffset returns the offset of the n-th record from the end of path.
func tailOffset(path string, n int) (int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	end := len(b)
	if end > 0 && b[end-1] != '\n' {
		end = bytes.LastIndexByte(b[:end], '\n') + 1
	}
	off := end
	for i := 0; i < n && off > 0; i++ {
		off = bytes.LastIndexByte(b[:off-1], '\n') + 1
	}
	return int64(off), nil
}

func wantStream(o LogOptions, stream string) bool {
	if !o.Stdout && !o.Stderr {
		return true
	}
	return (stream == "stdout" && o.Stdout) || (stream == "stderr" && o.Stderr)
}

// Logs sends the app's log records of an instance to fn; with Follow it
// goes on until the instance is no longer running (waiting for one that has
// not started yet) or ctx ends.
func (m *Manager) Logs(ctx context.Context, ref string, o LogOptions, fn func(api.LogRecord) error) error {
	in, err := m.lookup(ref)
	if err != nil {
		return err
	}
	path := in.logPath()
	var off int64
	if o.Tail >= 0 {
		if off, err = tailOffset(path, o.Tail); err != nil {
			return err
		}
	}
	send := func(r api.LogRecord) error {
		if !wantStream(o, r.Stream) {
			return nil
		}
		return fn(r)
	}
	for {
		in.mu.Lock()
		changed := in.changed
		active := in.rec.active() || in.rec.State == api.StateCreated
		in.mu.Unlock()
		if off, err = readLog(path, off, send); err != nil {
			return err
		}
		if !o.Follow || !active {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}
