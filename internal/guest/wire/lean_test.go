package wire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

var leanConfigs = []struct {
	name string
	c    Config
}{
	{"empty", Config{}},
	{"boot to snapshot", Config{AwaitConfig: true, RootDevice: "root", RootFSType: "erofs", DataDevice: "data", WritableLayer: LayerMemory}},
	{"spare VMM", Config{AwaitConfig: true, Spare: true, RootDevice: "root", RootFSType: "ext4", DataDevice: "data", WritableLayer: LayerDisk}},
	{"a start", Config{
		ID: "0123456789abcdef", Hostname: "web", Args: []string{"/app", "serve", ""}, Env: []string{"PATH=/bin", "QUOTE=\"a\\b\"\n\t\x01é€𝄞"},
		WorkingDir: "/srv", User: "nobody:nogroup", RootDevice: "root", RootFSType: "ext4", DataDevice: "data",
		NoAgent: true, TimeNS: -1763800000000000000, Seed: []byte{0, 1, 2, 254, 255},
		Net: &Net{MAC: "02:fc:0a:4d:00:05", Address: "10.77.0.5/16", Gateway: "10.77.0.1", DNS: []string{"10.77.0.1", "1.1.1.1"}, Search: "flick.internal"},
	}},
	{"empty lists and seed", Config{Args: []string{}, Env: []string{}, Seed: []byte{}, Net: &Net{DNS: []string{}}}},
}

func TestDecodeConfig(t *testing.T) {
	for _, tc := range leanConfigs {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.c)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeConfig(b)
			if err != nil {
				t.Fatalf("DecodeConfig(%s): %v", b, err)
			}
			var want Config
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("DecodeConfig(%s)\n got %#v\nwant %#v", b, got, want)
			}
		})
	}
}

func TestDecodeConfigAgreesOnEdges(t *testing.T) {
	for _, in := range []string{
		`null`,
		` {"ID":"upper","id":"last wins","unknown":{"a":[1,2.5e-3,true,false,null,"x"]},"args":null} `,
		`{"net":{"mac":"a"},"net":{"address":"b"}}`,
		`{"net":null}`,
		`{"seed":null,"time_ns":-0,"no_agent":null,"hostname":null}`,
		`{"env":["a",null,"\u00e9\ud834\udd1e\/"]}`,
	} {
		var want Config
		if err := json.Unmarshal([]byte(in), &want); err != nil {
			t.Fatalf("encoding/json refuses %s: %v", in, err)
		}
		got, err := DecodeConfig([]byte(in))
		if err != nil {
			t.Errorf("DecodeConfig(%s): %v", in, err)
		} else if !reflect.DeepEqual(got, want) {
			t.Errorf("DecodeConfig(%s)\n got %#v\nwant %#v", in, got, want)
		}
	}
}

func TestDecodeConfigRefuses(t *testing.T) {
	for _, in := range []string{
		``, `{`, `{"id":}`, `{"id":"a",}`, `{"id":"a"} x`, `{"id":1}`, `{"time_ns":1.5}`,
		`{"time_ns":99999999999999999999}`, `{"seed":"!!"}`, `{"id":"\x01"}`, `{"id":"\ud834"}`,
		`{"id":"\q"}`, `{"args":[1]}`, `{"no_agent":"yes"}`, `{"x":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
		`[]`, `{"id" "a"}`, `{"x":01}`, `{"x":-}`, `{"x":1.}`, `{"x":1e}`, `{"id":"a"`, `{"seed":[1,2]}`,
		"{\"\u017fEED\":\"AA==\"}", // encoding/json folds ſ onto s; keys are ASCII here
	} {
		if c, err := DecodeConfig([]byte(in)); err == nil {
			t.Errorf("DecodeConfig(%s) = %#v, want an error", in, c)
		}
	}
}

// FuzzDecodeConfig checks that DecodeConfig never panics and, where it
// accepts its input, agrees with encoding/json.
func FuzzDecodeConfig(f *testing.F) {
	for _, tc := range leanConfigs {
		b, _ := json.Marshal(tc.c)
		f.Add(b)
	}
	f.Add([]byte(`{"env":["a",null,"\u00e9\ud834\udd1e\/"],"net":{"dns":[]},"x":[{"y":null}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeConfig(b)
		if err != nil {
			return
		}
		var want Config
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatalf("DecodeConfig accepts %q, encoding/json does not: %v", b, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("DecodeConfig(%q)\n got %#v\nwant %#v", b, got, want)
		}
	})
}

func TestDecodeIdentityAndClock(t *testing.T) {
	id := Identity{Hostname: "clone-1", MachineID: "0123456789abcdef0123456789abcdef", Net: &Net{MAC: "02:fc:0a:4d:00:09", Address: "10.77.0.9/16"}, TimeNS: 42, Seed: []byte("seed")}
	b, _ := json.Marshal(id)
	got, err := DecodeIdentity(b)
	if err != nil || !reflect.DeepEqual(got, id) {
		t.Errorf("DecodeIdentity(%s) = %#v, %v; want %#v", b, got, err, id)
	}
	b, _ = json.Marshal(Clock{TimeNS: 1763800000123456789})
	if c, err := DecodeClock(b); err != nil || c.TimeNS != 1763800000123456789 {
		t.Errorf("DecodeClock(%s) = %#v, %v", b, c, err)
	}
	if _, err := DecodeClock([]byte(`{"time_ns":"soon"}`)); err == nil {
		t.Error("DecodeClock accepts a string for time_ns")
	}
}

func TestAppendEventAndHello(t *testing.T) {
	for _, e := range []Event{
		{Kind: EventExec},
		{Kind: EventStarted, PID: 42, BootNS: 123456789},
		{Kind: EventExited, ExitCode: 137, Signal: 9},
		{Kind: EventFailed, Message: "exec \"/app\": no such file\n\t\x00<&>é€\xff\xfe"},
	} {
		b := AppendEvent(nil, e)
		var got, want Event
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("AppendEvent(%#v) = %s: %v", e, b, err)
		}
		jb, _ := json.Marshal(e)
		_ = json.Unmarshal(jb, &want) // what the host gets from encoding/json
		if got != want {
			t.Errorf("AppendEvent(%#v) decodes to %#v, json.Marshal's to %#v", e, got, want)
		}
		if !strings.ContainsAny(e.Message, "<&>\x00\xff") && !bytes.Equal(b, jb) {
			t.Errorf("AppendEvent(%#v) = %s, json.Marshal %s", e, b, jb)
		}
	}
	h := Hello{BootNS: 408546635}
	jb, _ := json.Marshal(h)
	if b := AppendHello(nil, h); !bytes.Equal(b, jb) {
		t.Errorf("AppendHello = %s, json.Marshal %s", b, jb)
	}
}

// FuzzAppendEvent checks that every event AppendEvent writes is JSON that
// decodes to what json.Marshal's does.
func FuzzAppendEvent(f *testing.F) {
	f.Add("exited", "bad \xff byte", 1, int64(2))
	f.Fuzz(func(t *testing.T, kind, msg string, code int, boot int64) {
		e := Event{Kind: kind, Message: msg, ExitCode: code, PID: code / 2, Signal: code % 7, BootNS: boot}
		b := AppendEvent(nil, e)
		var got, want Event
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("AppendEvent(%#v) = %q: %v", e, b, err)
		}
		jb, _ := json.Marshal(e)
		if err := json.Unmarshal(jb, &want); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("AppendEvent(%#v) decodes to %#v, json.Marshal's to %#v", e, got, want)
		}
	})
}
