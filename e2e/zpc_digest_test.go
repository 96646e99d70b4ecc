package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/digest"
	"github.com/zpipes/zp/internal/wire"
)

// The content digest follows the session's protocol version (PROTOCOL
// §10.3): BLAKE3 from version 7, SHA-256 before. A raw client uploads over
// sessions of version 6 and 7: a COMMIT with the other version's digest of
// the right content is refused (409) and replaces nothing, the session's own
// is accepted, and with the checksum flag a FILE carrying the session's
// digest of the file in place is skipped while the other hash's is not.
func TestZpcDigestByVersion(t *testing.T) {
	t.Parallel()
	d := startInsecureZPD(t) // the raw DEALER speaks NULL
	for _, v := range []uint16{6, 7} {
		own, other := digest.For(v), digest.SHA256
		if v < digest.BLAKE3Version {
			other = digest.BLAKE3
		}
		dest := t.TempDir()
		writeFile(t, filepath.Join(dest, "kept"), []byte("precious"), 0o644, time.Unix(1e9, 0))
		s := rawDealer(t, d)
		var queued []wire.Message
		send := func(m wire.Message) {
			t.Helper()
			if err := s.Send(zmq4.NewMsgFrom(wire.Frames(m)...)); err != nil {
				t.Fatal(err)
			}
		}
		recv := func() wire.Message {
			t.Helper()
			for len(queued) == 0 {
				m, err := recvMsg(t, s)
				if err != nil {
					t.Fatalf("version %d: %v", v, err)
				}
				queued = unbatch(m)
			}
			m := queued[0]
			queued = queued[1:]
			return m
		}
		send(&wire.Open{Version: v})
		if ok, isOK := recv().(*wire.OpenOK); !isOK || ok.Version != v {
			t.Fatalf("version %d: OPEN answered %#v", v, ok)
		}
		// transfer runs one channel: each FILE gets the digest digests[fid]
		// (with the checksum flag) or its content committed with it, and
		// the outcome of each fid is returned ("skip", or a FILE-DONE code).
		transfer := func(ch uint32, flags uint8, files map[uint32]string, digests map[uint32][]byte) map[uint32]any {
			t.Helper()
			send(&wire.Send{Channel: ch, Flags: flags, Dest: dest})
			if ok, isOK := recv().(*wire.SendOK); !isOK {
				t.Fatalf("version %d: SEND answered %#v", v, ok)
			}
			f := &wire.File{Channel: ch, Kind: wire.KindFile, Mode: 0o644, MTime: 2e18, Size: uint64(len(hello))}
			for fid, name := range files {
				f.FID, f.Path, f.Digest = fid, name, nil
				if flags&wire.XferChecksum != 0 {
					f.Digest = digests[fid]
				}
				send(f)
			}
			var seq uint64
			out := map[uint32]any{}
			for len(out) < len(files) {
				switch m := recv().(type) {
				case *wire.FileOK:
					if m.Action == wire.ActionSkip {
						out[m.FID] = "skip"
						continue
					}
					send(&wire.Chunk{Channel: ch, FID: m.FID, Seq: seq, Bytes: hello})
					seq += uint64(len(hello))
					send(&wire.Commit{Channel: ch, FID: m.FID, Size: uint64(len(hello)), Digest: digests[m.FID]})
				case *wire.FileDone:
					out[m.FID] = m.Code
				case *wire.Ack, *wire.Ping, *wire.Pong:
				default:
					t.Fatalf("version %d: unexpected %#v", v, m)
				}
			}
			send(&wire.End{Channel: ch, Count: uint32(len(files))})
			for {
				if _, ok := recv().(*wire.End); ok {
					return out
				}
			}
		}
		got := transfer(1, 0, map[uint32]string{1: "kept", 2: "new"},
			map[uint32][]byte{1: sum(other, hello), 2: sum(own, hello)})
		if got[1] != uint16(wire.CodeConflict) || got[2] != uint16(0) {
			t.Errorf("version %d: COMMIT with the other digest %v (want 409), with its own %v (want 0)", v, got[1], got[2])
		}
		if b, _ := os.ReadFile(filepath.Join(dest, "kept")); string(b) != "precious" {
			t.Errorf("version %d: a refused COMMIT replaced the file: %q", v, b)
		}
		if b, _ := os.ReadFile(filepath.Join(dest, "new")); !bytes.Equal(b, hello) {
			t.Errorf("version %d: the accepted file holds %q", v, b)
		}
		// "new" holds hello now; "new" again with the checksum flag.
		got = transfer(3, wire.XferChecksum, map[uint32]string{1: "new"}, map[uint32][]byte{1: sum(own, hello)})
		if got[1] != "skip" {
			t.Errorf("version %d: checksum with its own digest of the file in place: %v, want skip", v, got[1])
		}
		got = transfer(5, wire.XferChecksum, map[uint32]string{1: "new"}, map[uint32][]byte{1: sum(other, hello)})
		if got[1] == "skip" {
			t.Errorf("version %d: checksum with the other hash's digest skipped the file", v)
		}
	}
}
