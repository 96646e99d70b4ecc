package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

// fleetView shows a broadcast as it goes: on a terminal a live table, a
// row per host (host, state, %, rate); elsewhere nothing but warnings.
type fleetView struct {
	io *cli.IO
	p  *mpb.Progress // nil when stderr is not a terminal

	mu   sync.Mutex
	bars map[*hostCopy]*hostBar
}

type hostBar struct {
	bar   *mpb.Bar
	state string
	last  time.Time
}

func newFleetView(io *cli.IO, _ bool) *fleetView {
	v := &fleetView{io: io, bars: map[*hostCopy]*hostBar{}}
	if io.ErrFile != nil && term.IsTerminal(int(io.ErrFile.Fd())) {
		v.p = mpb.New(mpb.WithOutput(io.Err), mpb.WithWidth(32), mpb.WithRefreshRate(200*time.Millisecond))
	}
	return v
}

// add shows h, waiting for its agent's answer.
func (v *fleetView) add(h *hostCopy) {
	if v.p == nil {
		return
	}
	hb := &hostBar{state: "asking", last: time.Now()}
	hb.bar = v.p.New(0, mpb.BarStyle(),
		mpb.PrependDecorators(
			decor.Name(printable(h.Host), decor.WCSyncSpaceR),
			decor.Any(func(decor.Statistics) string {
				v.mu.Lock()
				defer v.mu.Unlock()
				return hb.state
			}, decor.WCSyncSpaceR),
		),
		mpb.AppendDecorators(
			decor.Percentage(decor.WCSyncSpace),
			decor.EwmaSpeed(decor.SizeB1024(0), "% .1f", 30, decor.WCSyncSpace),
		))
	v.mu.Lock()
	v.bars[h] = hb
	v.mu.Unlock()
}

// update shows an agent's counts.
func (v *fleetView) update(h *hostCopy, st client.BroadcastStats) {
	if v.p == nil {
		return
	}
	v.mu.Lock()
	hb := v.bars[h]
	if hb == nil {
		v.mu.Unlock()
		return
	}
	hb.state = "writing"
	if h.Needed == 0 {
		hb.state = "checking"
	}
	now := time.Now()
	dur := now.Sub(hb.last)
	hb.last = now
	v.mu.Unlock()
	hb.bar.SetTotal(int64(max(h.Needed, 1)), false)
	hb.bar.EwmaSetCurrent(int64(min(st.Written, h.Needed)), dur)
}

// done shows how h ended.
func (v *fleetView) done(h *hostCopy) {
	if v.p == nil {
		return
	}
	v.mu.Lock()
	hb := v.bars[h]
	if hb == nil {
		v.mu.Unlock()
		return
	}
	hb.state = h.State
	if h.State == "" {
		hb.state = "failed"
	}
	v.mu.Unlock()
	if h.State == "ok" {
		hb.bar.SetTotal(int64(max(h.Needed, 1)), true)
	} else {
		hb.bar.Abort(false)
	}
}

// warn prints a line (above the table on a terminal).
func (v *fleetView) warn(msg string) {
	line := "zpc: " + printable(msg) + "\n"
	if v.p != nil {
		if _, err := v.p.Write([]byte(line)); err == nil {
			return
		}
	}
	fmt.Fprint(v.io.Err, line)
}

// finish stops the table.
func (v *fleetView) finish() {
	if v.p == nil {
		return
	}
	v.mu.Lock()
	for _, hb := range v.bars {
		if !hb.bar.Completed() {
			hb.bar.Abort(false)
		}
	}
	v.mu.Unlock()
	v.p.Wait()
}

func isDir(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}
