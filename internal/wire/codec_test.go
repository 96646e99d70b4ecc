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

		"jobs":       &Jobs{Channel: 2},
		"job-list":   &JobList{Channel: 2, Jobs: []map[string]string{{"id": "J1", "status": "running"}, {}}},
		"job-status": &JobStatus{Channel: 2, Job: "J1"},
		"job-info":   &JobInfo{Channel: 2, Info: map[string]string{"id": "J1", "exit_code": "0"}},
		"job-kill":   &JobKill{Channel: 2, Job: "J1", Signal: "TERM"},
		"job-rm":     &JobRm{Channel: 2, Job: "J1"},
		"follow":     &Follow{Channel: 2, Job: "J1", Streams: 3},
		"follow-ok":  &FollowOK{Channel: 2, Topic: "j/abc", Publish: ":5751", Info: map[string]string{"id": "J1"}},
		"fetch":      &Fetch{Channel: 2, Job: "J1", Stream: Stderr, Offset: 1 << 40, Length: 65536},
		"fetch-ok":   &FetchOK{Channel: 2, Stream: Stdout, Next: 10, Size: 20, Final: true},
		"job-output": &JobOutput{Job: "J1", Stream: Stdout, Offset: 99, Bytes: []byte("line\n")},
		"job-end":    &JobEnd{Job: "J1", Info: map[string]string{"status": "exited"}},

		"send":      &Send{Channel: 4, Flags: XferRecursive | XferChecksum, Dest: "backup/"},
		"send-ok":   &SendOK{Channel: 4, Mode: TargetInto, Window: 1 << 24, Root: "/home/a/backup"},
		"recv":      &Recv{Channel: 4, Flags: XferSingle, Window: 1 << 24, Sources: []string{"a.txt"}},
		"file":      &File{Channel: 4, FID: 7, Path: "d/f", Kind: KindFile, Mode: 0o4755, MTime: -5, Size: 1 << 33, Digest: bytes.Repeat([]byte{9}, 32), UID: 1000, GID: 100},
		"file-link": &File{Channel: 4, FID: 8, Path: "d/l", Kind: KindSymlink, Target: "../f"},
		"file-ok":   &FileOK{Channel: 4, FID: 7, Action: ActionSend, Have: 4096, Prefix: bytes.Repeat([]byte{1}, 32)},
		"chunk":     &Chunk{Channel: 4, FID: 7, Offset: 4096, Seq: 1 << 20, Bytes: []byte("content")},
		"commit":    &Commit{Channel: 4, FID: 7, Size: 4103, Digest: bytes.Repeat([]byte{2}, 32)},
		"file-done": &FileDone{Channel: 4, FID: 7, Code: uint16(CodeNoSpace), Reason: "disk full"},
		"end":       &End{Channel: 4, Count: 3},
		"batch": &Batch{Channel: 4, Msgs: []Message{
			&File{Channel: 4, FID: 9, Path: "d/g", Kind: KindFile, Mode: 0o644, MTime: 1, Size: 4096, UID: 1, GID: 2},
			&FileOK{Channel: 4, FID: 7, Action: ActionSkip},
			&Commit{Channel: 4, FID: 7, Size: 4103, Digest: bytes.Repeat([]byte{2}, 32)},
			&FileDone{Channel: 4, FID: 7, Reason: "ok"},
			&Ack{Channel: 4, Offset: 1, Limit: 2},
		}},

		"join":           &Join{Version: 3, Name: "web3", Labels: map[string]string{"role": "web", "dc": "par1"}, Software: "zpd/0.2.0", Metrics: ":9750", Heartbeat: 1000, Relay: ":5751", RelayControl: ":5750"},
		"join-v2":        &Join{Version: 2, Name: "web3", Labels: map[string]string{"role": "web"}, Software: "zpd/0.2.0", Metrics: ":9750", Heartbeat: 1000},
		"join-ok":        &JoinOK{Hub: "hub1 zpd/0.2.0", Publish: ":5751", Heartbeat: 1000, Timeout: 5000},
		"fleet":          &Fleet{Channel: 5, Hosts: []string{"web*", "db1"}, Labels: map[string]string{"role": "web"}},
		"fleet-list":     &FleetList{Channel: 5, Agents: []map[string]string{{"name": "web3", "state": "up"}}, Metrics: ":9750"},
		"tunnel":         &Tunnel{Channel: 6, Agent: "web3", Port: PortControl, Window: 1 << 20},
		"tunnel-ok":      &TunnelOK{Channel: 6, Window: 1 << 20},
		"publish":        &Publish{Channel: 7, Agents: []string{"web1", "web2"}},
		"publish-ok":     &PublishOK{Channel: 7, Topic: "f/abcdefghijklmnopqrstuvwx", Window: 1 << 22},
		"pub-data":       &PubData{Offset: 1 << 20, Flags: DataEOF, Bytes: []byte("sealed")},
		"pub-fetch":      &PubFetch{Channel: 8, Topic: "f/abcdefghijklmnopqrstuvwx", Offset: 0, Length: 1 << 20},
		"pub-fetch-ok":   &PubFetchOK{Channel: 8, Next: 100, Size: 200, Final: true},
		"fleet-job":      &FleetJob{Channel: 9, Command: "sleep 100", Jobs: map[string]string{"web1": "J1", "web2": "J2"}},
		"fleet-job-ok":   &FleetJobOK{Channel: 9, Job: "Fabc"},
		"fleet-jobs":     &FleetJobs{Channel: 9, Job: ""},
		"fleet-job-list": &FleetJobList{Channel: 9, Jobs: []map[string]string{{"id": "Fabc", "hosts": "2"}}},
		"exec-shared": &Exec{Channel: 1, Flags: ExecSharedStdin, Window: 1 << 18, Argv: []string{"cat"},
			Topic: "f/abcdefghijklmnopqrstuvwx", Key: bytes.Repeat([]byte{3}, 32), Record: 256 << 10},

		"bcast": &Bcast{Channel: 10, Flags: XferRecursive, Dest: "/srv/www", Topic: "f/abcdefghijklmnopqrstuvwx",
			Key: bytes.Repeat([]byte{4}, 32), Record: 256 << 10, Size: 123456, Count: 2001, Digest: bytes.Repeat([]byte{5}, 32)},
		"bcast-chunked": &Bcast{Channel: 10, Flags: XferRecursive | XferChunks, Dest: "/srv/www", Topic: "f/abcdefghijklmnopqrstuvwx",
			Key: bytes.Repeat([]byte{4}, 32), Record: 256 << 10, Size: 123456, Count: 2001, Digest: bytes.Repeat([]byte{5}, 32)},
		"bcast-chunks": &BcastChunks{Channel: 10, Topic: "f/cbcdefghijklmnopqrstuvwx", Key: bytes.Repeat([]byte{9}, 32),
			Record: 262124, Size: 6400, Chunk: 1 << 20, Digest: bytes.Repeat([]byte{10}, 32)},
		"bcast-need-chunks": &BcastNeedChunks{Channel: 10, Chunks: []byte{0x10, 0x00, 0x40}},
		"bcast-go-chunks":   &BcastGoChunks{Channel: 10, Chunks: []byte{0x30, 0x00, 0x40}},
		"bcast-need":        &BcastNeed{Channel: 10, Need: []byte{0x80, 0x01}, Have: 1 << 30},
		"bcast-go": &BcastGo{Channel: 10, Topic: "f/bbcdefghijklmnopqrstuvwx", Key: bytes.Repeat([]byte{6}, 32),
			Record: 256 << 10, Content: []byte{0xC0, 0x01}},
		"bcast-go-relay": &BcastGo{Channel: 10, Topic: "f/bbcdefghijklmnopqrstuvwx", Key: bytes.Repeat([]byte{6}, 32),
			Record: 256 << 10, Content: []byte{0xC0, 0x01}, Parent: "tcp://10.0.0.7:5751", ParentKey: bytes.Repeat([]byte{7}, 32), ParentControl: "tcp://10.0.0.7:5750",
			Children: bytes.Repeat([]byte{8}, 64)},
		"bcast-tree":     &BcastTree{Channel: 11, Fanout: 2, Agents: []string{"web1", "web2", "web3"}},
		"bcast-tree-ok":  &BcastTreeOK{Channel: 11, Nodes: []map[string]string{{"name": "web1", "parent": ""}, {"name": "web2", "parent": "web1", "relay": "tcp://10.0.0.7:5751", "key": "x"}}},
		"bcast-progress": &BcastProgress{Channel: 10, Stats: BcastStats{Written: 1 << 20, Live: 3 << 20, Repaired: 1 << 20, Deduped: 4096, Files: 12}},
		"bcast-done": &BcastDone{Channel: 10, Digest: bytes.Repeat([]byte{5}, 32),
			Stats: BcastStats{Written: 200 << 20, Live: 150 << 20, Repaired: 50 << 20, Deduped: 1 << 20, Files: 2001,
				FromRelay: 100 << 20, Relayed: 150 << 20, Reparented: 1}},
		"bcast-failed": &BcastDone{Channel: 10, Code: uint16(CodeNoSpace), Reason: "2 entries failed",
			Stats: BcastStats{Files: 1999, Failed: 2}, Failures: []string{"a/b: disk full", "c: disk full"}},
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
		{"empty batch", [][]byte{Encode(nil, &Batch{Channel: 1})}, ErrInvalid},
		{"batch in a batch", [][]byte{Encode(nil, &Batch{Channel: 1, Msgs: []Message{&Batch{Channel: 1, Msgs: []Message{&Ack{Channel: 1}}}}})}, ErrInvalid},
		{"chunk in a batch", [][]byte{Encode(nil, &Batch{Channel: 1, Msgs: []Message{&Chunk{Channel: 1, FID: 1}}})}, ErrFrames},
		{"exec in a batch", [][]byte{Encode(nil, &Batch{Channel: 1, Msgs: []Message{&Exec{Channel: 1, Argv: []string{"x"}}}})}, ErrInvalid},
		{"other channel in a batch", [][]byte{Encode(nil, &Batch{Channel: 1, Msgs: []Message{&Ack{Channel: 2}}})}, ErrInvalid},
		{"bad message in a batch", [][]byte{Encode(nil, &Batch{Channel: 1, Msgs: []Message{&Ack{Channel: 1, Offset: 5, Limit: 4}}})}, ErrInvalid},
		{"batch size past the end", [][]byte{func() []byte {
			b := Encode(nil, &Batch{Channel: 1, Msgs: []Message{&Ack{Channel: 1}}})
			b[3+4+4] = 0x01 // the first message's size, high octet
			return b
		}()}, ErrTruncated},
		{"too many in a batch", [][]byte{func() []byte {
			b := &Batch{Channel: 1}
			for range MaxBatch + 1 {
				b.Msgs = append(b.Msgs, &Ack{Channel: 1})
			}
			return Encode(nil, b)
		}()}, ErrInvalid},
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

func sampleManifest() ([]*File, []byte) {
	files := []*File{
		{FID: 1, Path: "", Kind: KindDir, Mode: 0o755, MTime: 1},
		{FID: 2, Path: "a.txt", Kind: KindFile, Mode: 0o644, MTime: 2, Size: 5, Digest: bytes.Repeat([]byte{7}, 32)},
		{FID: 3, Path: "l", Kind: KindSymlink, Target: "a.txt"},
	}
	var b []byte
	for _, f := range files {
		b = AppendManifestEntry(b, f)
	}
	return files, b
}

func TestManifestRoundTrip(t *testing.T) {
	files, b := sampleManifest()
	got, err := DecodeManifest(b, uint32(len(files)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, files) {
		t.Fatalf("got %#v", got)
	}
	if _, err := DecodeManifest(b, 2); !errors.Is(err, ErrTrailing) {
		t.Fatalf("short count: %v", err)
	}
	if _, err := DecodeManifest(b, 4); !errors.Is(err, ErrTruncated) {
		t.Fatalf("long count: %v", err)
	}
	dup := AppendManifestEntry(append([]byte(nil), b...), &File{FID: 4, Path: "a.txt", Kind: KindDir})
	if _, err := DecodeManifest(dup, 4); !errors.Is(err, ErrInvalid) {
		t.Fatalf("duplicate path: %v", err)
	}
	noDigest := AppendManifestEntry(nil, &File{FID: 1, Path: "x", Kind: KindFile, Size: 1})
	if _, err := DecodeManifest(noDigest, 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("file without digest: %v", err)
	}
	badFID := AppendManifestEntry(nil, &File{FID: 2, Path: "x", Kind: KindDir})
	if _, err := DecodeManifest(badFID, 1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("fid out of order: %v", err)
	}
}

// FuzzManifest: DecodeManifest never panics, and what it accepts
// re-encodes to the same octets.
func FuzzManifest(f *testing.F) {
	files, b := sampleManifest()
	f.Add(b, uint32(len(files)))
	f.Add(b[:len(b)-3], uint32(len(files)))
	f.Fuzz(func(t *testing.T, data []byte, count uint32) {
		got, err := DecodeManifest(data, count)
		if err != nil {
			return
		}
		var again []byte
		for _, f := range got {
			again = AppendManifestEntry(again, f)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("re-encodes differently")
		}
	})
}

// sampleChunkIndex: a manifest of a small file, a directory and two files
// of 3 and 2 chunks of 64 KiB, and its index.
func sampleChunkIndex() ([]*File, []byte) {
	files := []*File{
		{FID: 1, Path: "small", Kind: KindFile, Size: MinChunk, Digest: bytes.Repeat([]byte{1}, 32)},
		{FID: 2, Path: "d", Kind: KindDir},
		{FID: 3, Path: "three", Kind: KindFile, Size: 2*MinChunk + 1, Digest: bytes.Repeat([]byte{2}, 32)},
		{FID: 4, Path: "two", Kind: KindFile, Size: 2 * MinChunk, Digest: bytes.Repeat([]byte{3}, 32)},
	}
	var b []byte
	for i := range 5 {
		b = append(b, bytes.Repeat([]byte{byte(0x10 + i)}, 32)...)
	}
	return files, b
}

func TestChunkIndex(t *testing.T) {
	files, b := sampleChunkIndex()
	got, err := DecodeChunkIndex(b, files, MinChunk)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != nil || got[1] != nil || len(got[2]) != 3*32 || len(got[3]) != 2*32 || got[3][0] != 0x13 {
		t.Fatalf("split as %d, %d, %d, %d octets", len(got[0]), len(got[1]), len(got[2]), len(got[3]))
	}
	for name, c := range map[string]struct {
		b     []byte
		chunk uint32
	}{
		"short": {b[:len(b)-32], MinChunk}, "long": {append(b, make([]byte, 32)...), MinChunk},
		"odd": {b[:len(b)-1], MinChunk}, "chunk not a power of two": {b, MinChunk + 1},
		"chunk too small": {b, MinChunk / 2}, "chunk too large": {b, MaxChunk * 2},
		// In chunks of 128 KiB the files list 2 and 0 chunks: 64 octets.
		"another chunk size": {b, 2 * MinChunk},
	} {
		if _, err := DecodeChunkIndex(c.b, files, c.chunk); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if n := ChunkCount(1<<20, 1<<20); n != 0 {
		t.Errorf("one chunk listed as %d", n)
	}
	if n := ChunkCount(1<<20+1, 1<<20); n != 2 {
		t.Errorf("a chunk and an octet listed as %d", n)
	}
}

// FuzzChunkIndex: DecodeChunkIndex never panics, and what it accepts
// splits b whole, each file's list as long as its chunks.
func FuzzChunkIndex(f *testing.F) {
	files, b := sampleChunkIndex()
	f.Add(b, uint32(MinChunk), uint64(2*MinChunk+1))
	f.Add(b[:40], uint32(MinChunk), uint64(1<<62))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint32, size uint64) {
		files[2].Size = size
		got, err := DecodeChunkIndex(data, files, chunk)
		if err != nil {
			return
		}
		var n int
		for i, d := range got {
			if uint64(len(d)) != 32*ChunkCount(files[i].Size, chunk) && files[i].Kind == KindFile {
				t.Fatalf("entry %d: %d octets", i, len(d))
			}
			n += len(d)
		}
		if n != len(data) {
			t.Fatalf("split %d of %d octets", n, len(data))
		}
	})
}

func TestChunkMap(t *testing.T) {
	files, _ := sampleChunkIndex() // 3 and 2 chunks of 64 KiB: one octet each
	got, err := SplitChunkMap([]byte{0xA0, 0xC0}, files, MinChunk)
	if err != nil || got[0] != nil || got[1] != nil || !bytes.Equal(got[2], []byte{0xA0}) || !bytes.Equal(got[3], []byte{0xC0}) {
		t.Fatalf("split: %v %v", got, err)
	}
	for name, b := range map[string][]byte{"short": {0xA0}, "long": {0xA0, 0xC0, 0}, "a bit past the last chunk": {0xB0, 0xC0}} {
		if _, err := SplitChunkMap(b, files, MinChunk); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// SliceLen: what the stream holds of a file of 3 chunks and 5 octets
	// with chunks 0 and 2 in it, past an offset.
	const c = MinChunk
	for _, x := range []struct{ from, want uint64 }{{0, 2 * c}, {c / 2, c/2 + c}, {c, c}, {2*c + 10, c - 10}, {3 * c, 0}, {4 * c, 0}} {
		if got := SliceLen(3*c+5, []byte{0xA0}, c, x.from); got != x.want {
			t.Errorf("SliceLen from %d: %d, want %d", x.from, got, x.want)
		}
	}
	if got := SliceLen(3*c+5, nil, c, c); got != 2*c+5 {
		t.Errorf("SliceLen of a whole file from %d: %d", c, got)
	}
	huge := []*File{{Kind: KindFile, Size: 1 << 62}}
	if n := ChunkMapLen(huge, MinChunk); n != -1 {
		t.Errorf("a file of 2^62 octets: a map of %d octets", n)
	}
}

// FuzzChunkMap: SplitChunkMap never panics, and what it accepts splits b
// whole, each file's bitmap as long as its chunks make it.
func FuzzChunkMap(f *testing.F) {
	files, _ := sampleChunkIndex()
	f.Add([]byte{0xA0, 0xC0}, uint64(2*MinChunk+1))
	f.Add([]byte{0xFF}, uint64(1<<62))
	f.Fuzz(func(t *testing.T, data []byte, size uint64) {
		files[2].Size = size
		got, err := SplitChunkMap(data, files, MinChunk)
		if err != nil {
			return
		}
		var n int
		for i, m := range got {
			if files[i].Kind == KindFile && len(m) != BitmapLen(int(ChunkCount(files[i].Size, MinChunk))) {
				t.Fatalf("entry %d: %d octets", i, len(m))
			}
			n += len(m)
		}
		if n != len(data) {
			t.Fatalf("split %d of %d octets", n, len(data))
		}
	})
}
