package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// ShimArg is the hidden first argument that makes zpd run as a job's
// supervisor ("shim") instead of a daemon.
const ShimArg = "__zp-job-shim"

// shimEvent is one line of a job's status file, written by its shim.
type shimEvent struct {
	// ShimPID and ShimStart identify the shim; zpd writes this event
	// itself once it started the shim (meta.json may not be writable).
	ShimPID   int    `json:"shim_pid,omitempty"`
	ShimStart uint64 `json:"shim_start,omitempty"`
	// Lost says that a stream's log could not be written from octet At
	// on (Err: why, e.g. the disk is full); what followed was discarded.
	Lost   string    `json:"lost,omitempty"`
	At     uint64    `json:"at,omitempty"`
	Err    string    `json:"err,omitempty"`
	PID    int       `json:"pid,omitempty"`    // the command started
	EOF    string    `json:"eof,omitempty"`    // "stdout"/"stderr" reached end of file
	Exit   *int      `json:"exit,omitempty"`   // the command exited with this code
	Signal int       `json:"signal,omitempty"` // … or died of this signal
	Failed string    `json:"failed,omitempty"` // the command could not start
	Code   int       `json:"code,omitempty"`   // exit code for Failed (126/127)
	Done   bool      `json:"done,omitempty"`   // the shim is about to exit
	Time   time.Time `json:"time"`
}

// RunShim supervises one background job; zpd starts it as
// "zpd __zp-job-shim PATH ARGV..." in a new session, as the job's user,
// with fd 0 the job's stdin, fd 1 and 2 its output logs and fd 3 its
// status file, all opened by zpd. The shim runs the command in its own
// process group, copies its output into the logs (so it knows when every
// writer closed them), and records what happens in the status file. It
// outlives a zpd restart, so jobs keep running and are re-adopted.
func RunShim(args []string) int {
	status := os.NewFile(3, "status")
	emit := func(e shimEvent) {
		e.Time = time.Now().UTC()
		b, _ := json.Marshal(e)
		_, _ = status.Write(append(b, '\n')) // one write: an atomic append
	}
	if len(args) < 2 {
		emit(shimEvent{Failed: "bug: shim without a command", Code: 126})
		return 2
	}
	// Signals sent to the job's process group are for the command; the
	// shim stays to report the outcome. (Notify, not Ignore: ignored
	// dispositions would be inherited by the command.)
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGALRM, syscall.SIGTTIN, syscall.SIGTTOU)
	go func() {
		for range sigs {
		}
	}()

	outR, outW, err := os.Pipe()
	if err != nil {
		emit(shimEvent{Failed: err.Error(), Code: 126})
		return 1
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		emit(shimEvent{Failed: err.Error(), Code: 126})
		return 1
	}
	cmd := &exec.Cmd{Path: args[0], Args: args[1:], Stdin: os.Stdin, Stdout: outW, Stderr: errW}
	if err := cmd.Start(); err != nil {
		code := 126
		var pe *fs.PathError
		if errors.As(err, &pe) && errors.Is(pe.Err, syscall.ENOENT) {
			code = 127
		}
		emit(shimEvent{Failed: fmt.Sprintf("%s: %v", args[0], err), Code: code})
		return 1
	}
	outW.Close()
	errW.Close()
	emit(shimEvent{PID: cmd.Process.Pid})

	var copies sync.WaitGroup
	for _, c := range []struct {
		name string
		dst  *os.File
		src  *os.File
	}{{"stdout", os.Stdout, outR}, {"stderr", os.Stderr, errR}} {
		copies.Add(1)
		go func() {
			defer copies.Done()
			if n, err := copyLog(c.dst, c.src); err != nil {
				emit(shimEvent{Lost: c.name, At: n, Err: errText(err)})
				_, _ = io.Copy(io.Discard, c.src) // never block the command on its log
			}
			emit(shimEvent{EOF: c.name})
		}()
	}
	_ = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		emit(shimEvent{Signal: int(ws.Signal())})
	} else {
		code := ws.ExitStatus()
		emit(shimEvent{Exit: &code})
	}
	copies.Wait()
	emit(shimEvent{Done: true})
	return 0
}

// copyLog copies a job's output into its log until EOF (nil) or until a
// write fails (a full disk): it returns the octets written and the write
// error. Reads that fail end it as EOF.
func copyLog(dst io.Writer, src io.Reader) (uint64, error) {
	buf := make([]byte, 64<<10)
	var n uint64
	for {
		k, rerr := src.Read(buf)
		if k > 0 {
			w, werr := dst.Write(buf[:k])
			n += uint64(w)
			if werr != nil {
				return n, werr
			}
		}
		if rerr != nil {
			return n, nil
		}
	}
}
