package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden and the fuzz seed corpus")

// samples holds one or more instances of every message type, with the
// fields set to non-zero values so that a field dropped by encode or decode
// shows up in the round trip.
func samples() map[string]Message {
	return map[string]Message{
		"open":        &Open{Version: 1, User: "alice", Heartbeat: 1000, Client: "zp/test"},
		"open-resume": &Open{Version: 1, User: "bob", Session: "S1", Token: []byte{1, 2, 3, 4}, Client: "zp"},
		"open-ok": &OpenOK{Version: 1, Session: "SESSIONID", Token: bytes.Repeat([]byte{7}, 16),
			Heartbeat: 1000, Timeout: 5000, Grace: 60000, Resumed: true, Server: "host zpd/1"},
		"ping":     &Ping{Seq: 42},
		"pong":     &Pong{Seq: 42},
		"close":    &Close{},
		"ok":       &OK{Channel: 9},
		"error":    &Error{Channel: 3, Code: CodeNotFound, Reason: "no such job"},
		"exec":     &Exec{Channel: 1, Flags: ExecStdin, Window: 1 << 21, Argv: []string{"sh", "-c", "echo hi"}, Env: map[string]string{"LANG": "C.UTF-8", "A": ""}, Dir: "/tmp"},
		"exec-ok":  &ExecOK{Channel: 1, Job: "NUID123", PID: 4242, Window: 1 << 20},
		"data":     &Data{Channel: 1, Stream: Stdout, Offset: 1 << 33, Bytes: []byte("hello\x00world")},
		"data-eof": &Data{Channel: 1, Stream: Stdin, Offset: 7, Flags: DataEOF, Bytes: []byte{}},
		"ack":      &Ack{Channel: 1, Stream: Stderr, Offset: 100, Limit: 2_000_100},
		"signal":   &Signal{Channel: 1, Name: "INT"},
		"exit":     &Exit{Channel: 1, Status: Signaled, Code: 9, Message: "killed"},
		"fin":      &Fin{Channel: 1},
	}
}

func TestRoundTrip(t *testing.T) {
	for name, m := range samples() {
		t.Run(name, func(t *testing.T) {
			frames := Frames(m)
			got, err := Decode(frames)
			if err != nil {
				t.Fatal(err)
			}
			if p, ok := got.(Payloader); ok && len(p.Payload()) == 0 {
				// An empty payload decodes as an empty, non-nil frame.
				p.setPayload(m.(Payloader).Payload())
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, m)
			}
			again := Frames(got)
			if !reflect.DeepEqual(again, frames) {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

// TestGolden pins the wire bytes: a change here is a protocol change and
// must be reflected in docs/PROTOCOL.md (and probably the version).
func TestGolden(t *testing.T) {
	for name, m := range samples() {
		path := filepath.Join("testdata", "golden", name+".hex")
		var enc strings.Builder
		for _, f := range Frames(m) {
			enc.WriteString(hex.EncodeToString(f))
			enc.WriteString("\n")
		}
		if *update {
			os.MkdirAll(filepath.Dir(path), 0o755)
			if err := os.WriteFile(path, []byte(enc.String()), 0o644); err != nil {
				t.Fatal(err)
			}
			writeSeed(t, name, Frames(m))
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -update)", err)
		}
		if string(want) != enc.String() {
			t.Errorf("%s: encoding changed:\n got %s\nwant %s", name, enc.String(), want)
		}
	}
}

func writeSeed(t *testing.T, name string, frames [][]byte) {
	var data []byte
	var split int
	data = append(data, frames[0]...)
	split = len(frames[0])
	if len(frames) > 1 {
		data = append(data, frames[1]...)
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	os.MkdirAll(dir, 0o755)
	content := "go test fuzz v1\n[]byte(" + quote(data) + ")\nint(" + strconv.Itoa(split) + ")\nbool(" + boolStr(len(frames) > 1) + ")\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func quote(b []byte) string {
	var s strings.Builder
	s.WriteByte('"')
	for _, c := range b {
		s.WriteString("\\x")
		s.WriteString(hex.EncodeToString([]byte{c}))
	}
	s.WriteByte('"')
	return s.String()
}

func boolStr(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func TestDecodeErrors(t *testing.T) {
	good := Encode(nil, &Ack{Channel: 1, Offset: 1, Limit: 2})
	cases := []struct {
		name   string
		frames [][]byte
		want   error
	}{
		{"no frames", nil, ErrFrames},
		{"three frames", [][]byte{good, nil, nil}, ErrFrames},
		{"short", [][]byte{{0x5A}}, ErrTruncated},
		{"signature", [][]byte{{0x5B, 0x50, 0x13}}, ErrSignature},
		{"unknown id", [][]byte{{0x5A, 0x50, 0xEE}}, ErrUnknown},
		{"truncated field", [][]byte{good[:len(good)-1]}, ErrTruncated},
		{"trailing", [][]byte{append(append([]byte{}, good...), 0)}, ErrTrailing},
		{"ack without data frame is fine, with one is not", [][]byte{good, {1}}, ErrFrames},
		{"data without payload frame", [][]byte{Encode(nil, &Data{Channel: 1})}, ErrFrames},
		{"limit below offset", [][]byte{Encode(nil, &Ack{Offset: 5, Limit: 4})}, ErrInvalid},
		{"empty argv", [][]byte{Encode(nil, &Exec{Channel: 1})}, ErrInvalid},
		{"error code", [][]byte{Encode(nil, &Error{Code: 200})}, ErrInvalid},
		{"bool", [][]byte{func() []byte { b := Encode(nil, &OpenOK{}); b[len(b)-2] = 7; return b }()}, ErrInvalid},
		{"oversized header", [][]byte{make([]byte, MaxHeader+1)}, ErrTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode(c.frames)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	// A huge string count in EXEC must fail before allocating.
	exec := Encode(nil, &Exec{Channel: 1, Argv: []string{"x"}})
	exec[3+4+1+4] = 0x7f // argv count, high octet
	if _, err := Decode([][]byte{exec}); !errors.Is(err, ErrTruncated) {
		t.Fatalf("huge argv count: %v", err)
	}
}

func TestErrorIsError(t *testing.T) {
	m, err := Decode(Frames(&Error{Channel: 2, Code: CodeGone, Reason: "session expired"}))
	if err != nil {
		t.Fatal(err)
	}
	var we *Error
	if !errors.As(error(m.(*Error)), &we) || we.Code != CodeGone || we.Error() != "session expired (410)" {
		t.Fatalf("%v", m)
	}
}

// FuzzDecode: whatever arrives, Decode does not panic, and a message it
// accepts re-encodes to exactly the bytes it came from.
func FuzzDecode(f *testing.F) {
	for _, m := range samples() {
		fr := Frames(m)
		data := append([]byte{}, fr[0]...)
		if len(fr) > 1 {
			data = append(data, fr[1]...)
		}
		f.Add(data, len(fr[0]), len(fr) > 1)
	}
	f.Fuzz(func(t *testing.T, data []byte, split int, two bool) {
		var frames [][]byte
		if two {
			if split < 0 || split > len(data) {
				split = len(data)
			}
			frames = [][]byte{data[:split], data[split:]}
		} else {
			frames = [][]byte{data}
		}
		m, err := Decode(frames)
		if err != nil {
			return
		}
		again := Frames(m)
		if !bytes.Equal(again[0], frames[0]) {
			t.Fatalf("%s re-encodes differently:\n%x\n%x", m.ID(), again[0], frames[0])
		}
		if len(again) != len(frames) || (len(again) == 2 && !bytes.Equal(again[1], frames[1])) {
			t.Fatalf("%s payload differs", m.ID())
		}
	})
}

// Every message that carries a channel field is routed by ChannelOf.
func TestChannelOf(t *testing.T) {
	for name, m := range samples() {
		v := reflect.ValueOf(m).Elem()
		f := v.FieldByName("Channel")
		id, ok := ChannelOf(m)
		switch {
		case !f.IsValid():
			if ok {
				t.Errorf("%s: has no channel but ChannelOf says %d", name, id)
			}
		case f.Uint() == 0 && name == "error":
		case !ok || uint64(id) != f.Uint():
			t.Errorf("%s: ChannelOf = %d, %v; want %d", name, id, ok, f.Uint())
		}
	}
}
