package wire

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// The guest's side of the JSON messages on its boot path, without
// encoding/json. Under TCG every code path a guest runs for the first time
// is translated first: the first json.Unmarshal of a Config costs 19-28 ms
// there (reflection, the scanner, the decoder's caches) and later ones
// 0.3-0.5 ms. A cold boot, a restore from a snapshot and a resume all run
// it for the first time. These functions do the same with little code.
// They accept a subset of what encoding/json does (no invalid UTF-8, no
// lone surrogates, no numbers for a []byte) and, where they accept, agree
// with it; the host keeps encoding/json.

// DecodeConfig decodes a JSON Config.
func DecodeConfig(b []byte) (Config, error) {
	var c Config
	err := decodeTop(b, func(r *leanReader) error { return r.config(&c) })
	return c, err
}

// DecodeIdentity decodes a JSON Identity.
func DecodeIdentity(b []byte) (Identity, error) {
	var id Identity
	err := decodeTop(b, func(r *leanReader) error {
		return r.object(func(key string) error {
			switch {
			case keyIs(key, "hostname"):
				return r.str(&id.Hostname)
			case keyIs(key, "machine_id"):
				return r.str(&id.MachineID)
			case keyIs(key, "net"):
				return r.net(&id.Net)
			case keyIs(key, "time_ns"):
				return r.int64(&id.TimeNS)
			case keyIs(key, "seed"):
				return r.bytes(&id.Seed)
			}
			return r.skip()
		})
	})
	return id, err
}

// DecodeClock decodes a JSON Clock.
func DecodeClock(b []byte) (Clock, error) {
	var c Clock
	err := decodeTop(b, func(r *leanReader) error {
		return r.object(func(key string) error {
			if keyIs(key, "time_ns") {
				return r.int64(&c.TimeNS)
			}
			return r.skip()
		})
	})
	return c, err
}

// AppendHello appends h as JSON, as json.Marshal writes it.
func AppendHello(dst []byte, h Hello) []byte {
	dst = append(dst, `{"boot_ns":`...)
	dst = strconv.AppendInt(dst, h.BootNS, 10)
	return append(dst, '}')
}

// AppendEvent appends e as JSON, with the fields and omissions of
// json.Marshal.
func AppendEvent(dst []byte, e Event) []byte {
	dst = append(dst, `{"kind":`...)
	dst = appendString(dst, e.Kind)
	if e.PID != 0 {
		dst = append(dst, `,"pid":`...)
		dst = strconv.AppendInt(dst, int64(e.PID), 10)
	}
	dst = append(dst, `,"exit_code":`...)
	dst = strconv.AppendInt(dst, int64(e.ExitCode), 10)
	if e.Signal != 0 {
		dst = append(dst, `,"signal":`...)
		dst = strconv.AppendInt(dst, int64(e.Signal), 10)
	}
	if e.Message != "" {
		dst = append(dst, `,"message":`...)
		dst = appendString(dst, e.Message)
	}
	if e.BootNS != 0 {
		dst = append(dst, `,"boot_ns":`...)
		dst = strconv.AppendInt(dst, e.BootNS, 10)
	}
	return append(dst, '}')
}

// appendString appends s as a JSON string; invalid UTF-8 becomes U+FFFD,
// as with json.Marshal.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+size]...)
		}
		i += size
	}
	return append(dst, '"')
}

// errSyntax is the error of every malformed input; the offset says where.
var errSyntax = errors.New("invalid JSON")

type leanReader struct {
	b     []byte
	i     int
	depth int // of the values skip is inside
}

// maxDepth bounds the nesting of skipped values.
const maxDepth = 100

func decodeTop(b []byte, value func(*leanReader) error) error {
	r := &leanReader{b: b}
	if err := value(r); err != nil {
		return err
	}
	r.ws()
	if r.i != len(r.b) {
		return r.fail("data after the value")
	}
	return nil
}

func (r *leanReader) fail(what string) error {
	return fmt.Errorf("%w at offset %d: %s", errSyntax, r.i, what)
}

func (r *leanReader) ws() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// peek skips white space and returns the next byte, 0 at the end.
func (r *leanReader) peek() byte {
	r.ws()
	if r.i < len(r.b) {
		return r.b[r.i]
	}
	return 0
}

// null consumes a null if one comes next.
func (r *leanReader) null() (bool, error) {
	if r.peek() != 'n' {
		return false, nil
	}
	return true, r.word("null")
}

func (r *leanReader) word(w string) error {
	if len(r.b)-r.i < len(w) || string(r.b[r.i:r.i+len(w)]) != w {
		return r.fail("expected " + w)
	}
	r.i += len(w)
	return nil
}

// object reads an object, calling field for each key with the reader at
// its value, which field must consume; null is an object with no keys.
func (r *leanReader) object(field func(key string) error) error {
	if isNull, err := r.null(); isNull || err != nil {
		return err
	}
	if r.peek() != '{' {
		return r.fail("expected an object")
	}
	r.i++
	if r.peek() == '}' {
		r.i++
		return nil
	}
	for {
		if r.peek() != '"' {
			return r.fail("expected a key")
		}
		key, err := r.stringValue()
		if err != nil {
			return err
		}
		for i := 0; i < len(key); i++ {
			if key[i] >= utf8.RuneSelf {
				// encoding/json folds some of these onto ASCII
				// names; no message of ours has one.
				return r.fail("a key that is not ASCII")
			}
		}
		if r.peek() != ':' {
			return r.fail("expected a colon")
		}
		r.i++
		if err := field(key); err != nil {
			return err
		}
		switch r.peek() {
		case ',':
			r.i++
		case '}':
			r.i++
			return nil
		default:
			return r.fail("expected a comma or the object's end")
		}
	}
}

// array reads an array, calling elem with the reader at each element;
// null calls nothing and reports true.
func (r *leanReader) array(elem func() error) (isNull bool, err error) {
	if isNull, err := r.null(); isNull || err != nil {
		return isNull, err
	}
	if r.peek() != '[' {
		return false, r.fail("expected an array")
	}
	r.i++
	if r.peek() == ']' {
		r.i++
		return false, nil
	}
	for {
		if err := elem(); err != nil {
			return false, err
		}
		switch r.peek() {
		case ',':
			r.i++
		case ']':
			r.i++
			return false, nil
		default:
			return false, r.fail("expected a comma or the array's end")
		}
	}
}

// stringValue reads a string token.
func (r *leanReader) stringValue() (string, error) {
	if r.peek() != '"' {
		return "", r.fail("expected a string")
	}
	r.i++
	start := r.i
	// The common case: no escapes.
	for r.i < len(r.b) {
		c := r.b[r.i]
		if c == '"' {
			s := string(r.b[start:r.i])
			r.i++
			if !utf8.ValidString(s) {
				return "", r.fail("invalid UTF-8")
			}
			return s, nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
		r.i++
	}
	var sb strings.Builder
	sb.Write(r.b[start:r.i])
	for r.i < len(r.b) {
		c := r.b[r.i]
		switch {
		case c == '"':
			r.i++
			s := sb.String()
			if !utf8.ValidString(s) {
				return "", r.fail("invalid UTF-8")
			}
			return s, nil
		case c < 0x20:
			return "", r.fail("control character in a string")
		case c != '\\':
			sb.WriteByte(c)
			r.i++
			continue
		}
		r.i++
		if r.i >= len(r.b) {
			break
		}
		e := r.b[r.i]
		r.i++
		switch e {
		case '"', '\\', '/':
			sb.WriteByte(e)
		case 'b':
			sb.WriteByte('\b')
		case 'f':
			sb.WriteByte('\f')
		case 'n':
			sb.WriteByte('\n')
		case 'r':
			sb.WriteByte('\r')
		case 't':
			sb.WriteByte('\t')
		case 'u':
			c1, ok := r.hex4()
			if !ok {
				return "", r.fail("bad \\u escape")
			}
			ru := rune(c1)
			if utf16.IsSurrogate(ru) {
				if r.i+1 >= len(r.b) || r.b[r.i] != '\\' || r.b[r.i+1] != 'u' {
					return "", r.fail("lone surrogate")
				}
				r.i += 2
				c2, ok := r.hex4()
				if !ok {
					return "", r.fail("bad \\u escape")
				}
				if ru = utf16.DecodeRune(ru, rune(c2)); ru == utf8.RuneError {
					return "", r.fail("lone surrogate")
				}
			}
			sb.WriteRune(ru)
		default:
			return "", r.fail("bad escape")
		}
	}
	return "", r.fail("unterminated string")
}

func (r *leanReader) hex4() (uint16, bool) {
	if len(r.b)-r.i < 4 {
		return 0, false
	}
	v, err := strconv.ParseUint(string(r.b[r.i:r.i+4]), 16, 16)
	if err != nil {
		return 0, false
	}
	r.i += 4
	return uint16(v), true
}

// str reads a string into dst; null leaves dst as it is.
func (r *leanReader) str(dst *string) error {
	if isNull, err := r.null(); isNull || err != nil {
		return err
	}
	s, err := r.stringValue()
	*dst = s
	return err
}

// strs reads an array of strings into dst; null makes it nil.
func (r *leanReader) strs(dst *[]string) error {
	out := []string{}
	isNull, err := r.array(func() error {
		var s string
		err := r.str(&s)
		out = append(out, s)
		return err
	})
	if err != nil {
		return err
	}
	if isNull {
		out = nil
	}
	*dst = out
	return nil
}

// number reads a number token as JSON writes them.
func (r *leanReader) number() (string, error) {
	r.ws()
	start := r.i
	if r.i < len(r.b) && r.b[r.i] == '-' {
		r.i++
	}
	digits := func() int {
		n := 0
		for r.i < len(r.b) && r.b[r.i] >= '0' && r.b[r.i] <= '9' {
			r.i++
			n++
		}
		return n
	}
	switch {
	case r.i < len(r.b) && r.b[r.i] == '0':
		r.i++
	case digits() == 0:
		return "", r.fail("expected a number")
	}
	if r.i < len(r.b) && r.b[r.i] == '.' {
		r.i++
		if digits() == 0 {
			return "", r.fail("expected a digit")
		}
	}
	if r.i < len(r.b) && (r.b[r.i] == 'e' || r.b[r.i] == 'E') {
		r.i++
		if r.i < len(r.b) && (r.b[r.i] == '+' || r.b[r.i] == '-') {
			r.i++
		}
		if digits() == 0 {
			return "", r.fail("expected a digit")
		}
	}
	return string(r.b[start:r.i]), nil
}

// int64 reads an integer into dst; null leaves dst as it is.
func (r *leanReader) int64(dst *int64) error {
	if isNull, err := r.null(); isNull || err != nil {
		return err
	}
	s, err := r.number()
	if err != nil {
		return err
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return r.fail("not an int64: " + s)
	}
	*dst = v
	return nil
}

// bool reads true or false into dst; null leaves dst as it is.
func (r *leanReader) bool(dst *bool) error {
	switch r.peek() {
	case 't':
		*dst = true
		return r.word("true")
	case 'f':
		*dst = false
		return r.word("false")
	case 'n':
		return r.word("null")
	}
	return r.fail("expected true or false")
}

// bytes reads a base64 string into dst; null makes it nil.
func (r *leanReader) bytes(dst *[]byte) error {
	if isNull, err := r.null(); isNull || err != nil {
		if isNull {
			*dst = nil
		}
		return err
	}
	s, err := r.stringValue()
	if err != nil {
		return err
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(b, []byte(s))
	if err != nil {
		return r.fail("bad base64")
	}
	*dst = b[:n]
	return nil
}

// skip reads any value.
func (r *leanReader) skip() error {
	r.depth++
	defer func() { r.depth-- }()
	if r.depth > maxDepth {
		return r.fail("nested too deep")
	}
	switch c := r.peek(); {
	case c == '{':
		return r.object(func(string) error { return r.skip() })
	case c == '[':
		_, err := r.array(r.skip)
		return err
	case c == '"':
		_, err := r.stringValue()
		return err
	case c == 't':
		return r.word("true")
	case c == 'f':
		return r.word("false")
	case c == 'n':
		return r.word("null")
	default:
		_, err := r.number()
		return err
	}
}

func (r *leanReader) net(dst **Net) error {
	if isNull, err := r.null(); isNull || err != nil {
		if isNull {
			*dst = nil
		}
		return err
	}
	n := *dst
	if n == nil {
		n = &Net{}
	}
	err := r.object(func(key string) error {
		switch {
		case keyIs(key, "mac"):
			return r.str(&n.MAC)
		case keyIs(key, "address"):
			return r.str(&n.Address)
		case keyIs(key, "gateway"):
			return r.str(&n.Gateway)
		case keyIs(key, "dns"):
			return r.strs(&n.DNS)
		case keyIs(key, "search"):
			return r.str(&n.Search)
		}
		return r.skip()
	})
	*dst = n
	return err
}

func (r *leanReader) config(c *Config) error {
	return r.object(func(key string) error {
		switch {
		case keyIs(key, "id"):
			return r.str(&c.ID)
		case keyIs(key, "hostname"):
			return r.str(&c.Hostname)
		case keyIs(key, "args"):
			return r.strs(&c.Args)
		case keyIs(key, "env"):
			return r.strs(&c.Env)
		case keyIs(key, "working_dir"):
			return r.str(&c.WorkingDir)
		case keyIs(key, "user"):
			return r.str(&c.User)
		case keyIs(key, "root_device"):
			return r.str(&c.RootDevice)
		case keyIs(key, "root_fstype"):
			return r.str(&c.RootFSType)
		case keyIs(key, "data_device"):
			return r.str(&c.DataDevice)
		case keyIs(key, "writable_layer"):
			return r.str(&c.WritableLayer)
		case keyIs(key, "no_agent"):
			return r.bool(&c.NoAgent)
		case keyIs(key, "await_config"):
			return r.bool(&c.AwaitConfig)
		case keyIs(key, "spare"):
			return r.bool(&c.Spare)
		case keyIs(key, "time_ns"):
			return r.int64(&c.TimeNS)
		case keyIs(key, "seed"):
			return r.bytes(&c.Seed)
		case keyIs(key, "net"):
			return r.net(&c.Net)
		}
		return r.skip()
	})
}

// keyIs matches a key to a field's name as encoding/json does for ASCII
// keys: exactly, or else without regard to case.
func keyIs(key, name string) bool {
	return key == name || strings.EqualFold(key, name)
}
