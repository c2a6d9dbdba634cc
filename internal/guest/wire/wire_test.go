package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, TypeStdout, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := WriteJSON(&buf, TypeEvent, Event{Kind: EventExited, ExitCode: 3}); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(&buf, TypeAck, nil); err != nil {
		t.Fatal(err)
	}
	f, err := ReadFrame(&buf)
	if err != nil || f.Type != TypeStdout || string(f.Payload) != "hello" {
		t.Fatalf("first frame = %+v, %v", f, err)
	}
	f, err = ReadFrame(&buf)
	if err != nil || f.Type != TypeEvent || string(f.Payload) != `{"kind":"exited","exit_code":3}` {
		t.Fatalf("second frame = %+v %q, %v", f, f.Payload, err)
	}
	f, err = ReadFrame(&buf)
	if err != nil || f.Type != TypeAck || len(f.Payload) != 0 {
		t.Fatalf("third frame = %+v, %v", f, err)
	}
	if _, err := ReadFrame(&buf); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
}

func TestReadFrameErrors(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"truncated header", []byte{TypeStdout, 0, 0}, io.ErrUnexpectedEOF},
		{"truncated payload", []byte{TypeStdout, 0, 0, 0, 5, 'a', 'b'}, io.ErrUnexpectedEOF},
		{"too large", []byte{TypeStdout, 0xff, 0xff, 0xff, 0xff}, ErrFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(tt.in))
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
	if err := WriteFrame(io.Discard, TypeStdout, make([]byte, MaxPayload+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("WriteFrame of an oversized payload: %v", err)
	}
}

// FuzzReadFrame feeds arbitrary bytes to the frame reader: it must never
// panic, never return a payload over MaxPayload, and whatever it reads must
// write back to the same bytes.
func FuzzReadFrame(f *testing.F) {
	var seed bytes.Buffer
	WriteFrame(&seed, TypeHello, []byte(`{"boot_ns":1}`))
	WriteFrame(&seed, TypeSignal, []byte{15})
	f.Add(seed.Bytes())
	f.Add([]byte{TypeStdout, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var out bytes.Buffer
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				break
			}
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
			if err := WriteFrame(&out, fr.Type, fr.Payload); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.HasPrefix(data, out.Bytes()) {
			t.Fatalf("frames read do not write back to the input's prefix")
		}
	})
}

func TestMergeEnv(t *testing.T) {
	got := MergeEnv([]string{"PATH=/bin", "A=1"}, []string{"A=2", "B=3"})
	want := []string{"PATH=/bin", "A=2", "B=3"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("MergeEnv = %q, want %q", got, want)
	}
}
