package zmtp_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/zpipes/zp/internal/zmtp"
)

// Subscribers that stop reading may queue past SendQueue only within the
// Burst they share: each up to PerPeer, all together up to Max past their
// SendQueue (plus the rest of the message being queued); the rest is dropped, and what they held is uncounted once they
// are gone.
func TestBurstBoundsAllQueues(t *testing.T) {
	const sendQueue = 64 << 10
	burst := &zmtp.Burst{PerPeer: 1 << 20, Max: 1 << 20}
	var drops atomic.Int64
	xpub, ep := listen(t, &zmtp.Config{SocketType: "XPUB", OnFull: zmtp.DropMessage, NoCopy: true,
		SendQueue: sendQueue, Burst: burst, OnDrop: func() { drops.Add(1) }}, zmq4.NewXPub)

	const subs = 3
	arrived := make(chan int, subs)
	release := make(chan struct{})
	var socks []zmq4.Socket
	for i := range subs {
		first := true
		topic := fmt.Sprint("t", i)
		s := dial(t, &zmtp.Config{SocketType: "SUB", OnRecv: func([]byte, [][]byte) {
			if first {
				first = false
				arrived <- i
			}
			<-release // stalled: the connection stops reading
		}}, zmq4.NewSub, ep)
		if err := s.SetOption(zmq4.OptionSubscribe, topic); err != nil {
			t.Fatal(err)
		}
		socks = append(socks, s)
	}
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	// Publish until every subscriber has taken its first message (and
	// stalled on it).
	deadline := time.Now().Add(10 * time.Second)
	for n := 0; n < subs; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d subscribers received the probe", n, subs)
		}
		for i := range subs {
			if err := xpub.Send(zmq4.NewMsgFrom(fmt.Appendf(nil, "t%d", i), []byte("probe"))); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case <-arrived:
			n++
		case <-time.After(20 * time.Millisecond):
		}
	}

	// Then far more than the kernel's socket buffers and the queues hold.
	const size = 64 << 10
	var peak int64
	for i := 0; i < 4096 && drops.Load() < 100; i++ {
		if err := xpub.Send(zmq4.NewMsgFrom(fmt.Appendf(nil, "t%d", i%subs), make([]byte, size))); err != nil {
			t.Fatal(err)
		}
		// A message is admitted by its first frame and never split, so
		// the rest of one message may go past Max.
		used := burst.Used()
		if used > burst.Max+size {
			t.Fatalf("the queues reference %d octets, Max is %d", used, burst.Max)
		}
		peak = max(peak, used)
	}
	if drops.Load() == 0 {
		t.Fatal("no message was dropped for the stalled subscribers")
	}
	if peak <= subs*sendQueue+size {
		t.Fatalf("the queues never referenced more than %d octets: no queue grew past its SendQueue", peak)
	}

	close(release)
	for _, s := range socks {
		s.Close()
	}
	for end := time.Now().Add(10 * time.Second); burst.Used() != 0; {
		if time.Now().After(end) {
			t.Fatalf("%d octets still counted after the subscribers left", burst.Used())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
