package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/zpipes/zp/credit"
	"github.com/zpipes/zp/internal/secretbox"
	"github.com/zpipes/zp/internal/wire"
)

// SharedStdin names a publication a fleet command reads as its stdin
// (docs/PROTOCOL.md §13.5): set ExecRequest.Shared to it (and leave Stdin
// nil) on a session with an agent of the hub that stores it.
type SharedStdin struct {
	Topic  string
	Key    [32]byte // the records' secretbox key; it reaches agents only through their tunnels
	Record int      // plaintext octets per record, at most
}

// sharedRecord is the plaintext a record holds at most: a record with its
// length and tag is then 256 KiB, a DATA message of its own.
const sharedRecord = 256<<10 - secretbox.Overhead - 4

// Publication is a stream published once to the hub for several agents:
// the hub stores it and publishes it on its XPUB; only the agents named
// may receive or fetch it, and only those given Shared's key (inside their
// tunnels) can read it. Close it once every command that reads it ended:
// the hub then deletes it.
type Publication struct {
	Shared SharedStdin

	s      *Session
	id     uint32
	ps     *credit.Sender
	cancel context.CancelFunc
	done   chan struct{} // the reader of ACKs ended
	once   sync.Once

	mu   sync.Mutex
	err  error
	sent uint64 // plaintext octets published
	eof  bool   // the final record was sent
}

// Publish asks the hub to store r's content for the agents named, and
// sends it there, encrypted, as the hub grants credit. It returns once the
// hub has accepted the publication; the content follows in the background
// until r's EOF.
func (f *Fleet) Publish(ctx context.Context, agents []string, r io.Reader) (*Publication, error) {
	return f.publish(ctx, agents, r, false)
}

// publish is Publish; full cuts r in full records (every record but the
// last holds Record octets: docs/PROTOCOL.md §14.6), which lets a reader
// start at any record, rather than in records of what each read gives.
func (f *Fleet) publish(ctx context.Context, agents []string, r io.Reader, full bool) (_ *Publication, err error) {
	defer func() { err = public(err) }()
	s := f.s
	id, inbox := s.openChannel()
	if err := s.send(&wire.Publish{Channel: id, Agents: agents}); err != nil {
		s.closeChannel(id)
		return nil, err
	}
	var ok *wire.PublishOK
	select {
	case m := <-inbox:
		switch m := m.(type) {
		case *wire.PublishOK:
			ok = m
		case *wire.Error:
			s.closeChannel(id)
			return nil, m
		default:
			s.closeChannel(id)
			return nil, &ProtocolError{fmt.Errorf("hub answered PUBLISH with %s", m.ID())}
		}
	case <-s.done:
		s.closeChannel(id)
		return nil, s.err
	case <-ctx.Done():
		_ = s.send(&wire.Fin{Channel: id})
		s.closeChannel(id)
		return nil, ctx.Err()
	}
	p := &Publication{s: s, id: id, ps: credit.NewSender(uint64(ok.Window)), done: make(chan struct{}),
		Shared: SharedStdin{Topic: ok.Topic, Record: sharedRecord}}
	if _, err := rand.Read(p.Shared.Key[:]); err != nil {
		panic("bug: crypto/rand failed: " + err.Error())
	}
	pctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go p.acks(pctx, inbox)
	go p.pump(pctx, r, full)
	return p, nil
}

// acks applies the hub's credit until the publication ends.
func (p *Publication) acks(ctx context.Context, inbox <-chan wire.Message) {
	defer close(p.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.s.done:
			p.setErr(p.s.err)
			return
		case m := <-inbox:
			switch m := m.(type) {
			case *wire.Ack:
				if err := p.ps.Ack(m.Offset, m.Limit); err != nil {
					p.setErr(err)
					return
				}
			case *wire.Error:
				p.setErr(m)
				return
			}
		}
	}
}

func (p *Publication) setErr(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	p.ps.Close(err)
}

// Err is what ended the publication early (the hub refused more: an
// *Error; the session ended; reading the input failed), or nil.
func (p *Publication) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return public(p.err)
}

// pump reads r into records, encrypts and sends them within the credit:
// a record of what each read gives, or, full, of Record octets but the
// last. A read that blocks when the publication is closed is left behind
// (a terminal stdin).
func (p *Publication) pump(ctx context.Context, r io.Reader, full bool) {
	buf := make([]byte, p.Shared.Record)
	var i uint64
	for {
		var n int
		var rerr error
		if full {
			n, rerr = io.ReadFull(r, buf)
			if errors.Is(rerr, io.ErrUnexpectedEOF) {
				rerr = io.EOF
			}
		} else {
			n, rerr = r.Read(buf)
		}
		if ctx.Err() != nil {
			return
		}
		if n > 0 {
			if !p.record(ctx, buf[:n], false, i) {
				return
			}
			i++
			p.mu.Lock()
			p.sent += uint64(n)
			p.mu.Unlock()
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				// The agents must not take a cut stream for a whole one:
				// no final record, so they report the stream truncated.
				p.setErr(fmt.Errorf("reading the input: %w", rerr))
				return
			}
			if p.record(ctx, nil, true, i) {
				_ = p.s.send(&wire.Data{Channel: p.id, Stream: wire.Stdin, Offset: p.ps.SentEOF(), Flags: wire.DataEOF, Bytes: []byte{}})
				p.mu.Lock()
				p.eof = true
				p.mu.Unlock()
			}
			return
		}
	}
}

// record sends record i: its length, then the secretbox of plain.
func (p *Publication) record(ctx context.Context, plain []byte, final bool, i uint64) bool {
	rec := make([]byte, 4, 4+len(plain)+secretbox.Overhead)
	binary.BigEndian.PutUint32(rec, uint32(len(plain)+secretbox.Overhead))
	rec = secretbox.Seal(rec, plain, RecordNonce(final, i), &p.Shared.Key)
	for len(rec) > 0 {
		n, err := p.ps.Credit(ctx, len(rec))
		if err != nil {
			return false
		}
		piece := rec[:n:n]
		rec = rec[n:]
		off := p.ps.Sent(piece)
		if err := p.s.send(&wire.Data{Channel: p.id, Stream: wire.Stdin, Offset: off, Bytes: piece}); err != nil {
			p.setErr(err)
			return false
		}
	}
	return true
}

// RecordNonce is the nonce of shared-stdin record i: "zp-stdin-record",
// one octet 1 for the final record (else 0), and i in 8 octets big-endian.
func RecordNonce(final bool, i uint64) *[24]byte {
	var n [24]byte
	copy(n[:], "zp-stdin-record")
	if final {
		n[15] = 1
	}
	binary.BigEndian.PutUint64(n[16:], i)
	return &n
}

// Sent reports the plaintext octets published so far and whether the
// whole input was.
func (p *Publication) Sent() (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent, p.eof
}

// Close ends the publication: the hub deletes it (FIN).
func (p *Publication) Close() error {
	p.once.Do(func() {
		p.cancel()
		p.ps.Close(nil)
		<-p.done
		_ = p.s.send(&wire.Fin{Channel: p.id})
		p.s.closeChannel(p.id)
	})
	return p.Err()
}
