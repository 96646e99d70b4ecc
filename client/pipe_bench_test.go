package client_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/zpipes/zp/client"
)

// BenchmarkPipe measures a remote command's 256 MiB stdout (down: `cat
// FILE`) and stdin (up: `wc -c`) through an in-process broker over CURVE
// on 127.0.0.1, for DATA sizes and credit windows (the defaults:
// chunk=default/window=default). Besides time it reports the process's
// CPU time per operation (broker and client together, the command not
// included), steadier than wall time on a shared machine:
//
//	go test -run=^$ -bench=Pipe -benchtime=3x -count=6 ./client/ | benchstat -col /chunk -
func BenchmarkPipe(b *testing.B) {
	const size = 256 << 20
	src := filepath.Join(b.TempDir(), "src")
	f, _ := os.Create(src)
	io.CopyN(f, zeroishReader{}, size)
	f.Close()
	type size2 struct{ chunk, window int }
	// 0/0: the defaults of broker and client; the others set both.
	sizes := []size2{{0, 0}, {256 << 10, 4 << 20}, {256 << 10, 16 << 20}, {1 << 20, 4 << 20}, {1 << 20, 16 << 20}}
	for _, dir := range []string{"down", "up"} {
		for _, sz := range sizes {
			chunk, window := sz.chunk, sz.window
			name := fmt.Sprintf("dir=%s/chunk=%dK/window=%dM", dir, chunk>>10, window>>20)
			if chunk == 0 {
				name = fmt.Sprintf("dir=%s/chunk=default/window=default", dir)
			}
			{
				b.Run(name, func(b *testing.B) {
					s, stop := benchSession(b, chunk, window)
					defer stop()
					b.SetBytes(size)
					cpu0 := cpuTime()
					for i := 0; i < b.N; i++ {
						var req client.ExecRequest
						var n countWriter
						if dir == "down" {
							req = client.ExecRequest{Argv: []string{"cat", src}, Stdout: &n}
						} else {
							in, err := os.Open(src)
							if err != nil {
								b.Fatal(err)
							}
							req = client.ExecRequest{Argv: []string{"sh", "-c", "wc -c"}, Stdin: in, Stdout: &n}
							defer in.Close()
						}
						st, err := s.Exec(context.Background(), req)
						if err != nil || st.ExitCode() != 0 {
							b.Fatalf("%v %+v", err, st)
						}
						if dir == "down" && n.n != size {
							b.Fatalf("received %d octets, want %d", n.n, size)
						}
						if dir == "up" && !bytes.Equal(bytes.TrimSpace(n.last), []byte(fmt.Sprint(size))) {
							b.Fatalf("remote wc -c says %q, want %d", n.last, size)
						}
					}
					b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
				})
			}
		}
	}
}

type countWriter struct {
	n    int
	last []byte
}

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	w.last = append(w.last[:0], p...)
	return len(p), nil
}

// cpuTime is the user and system time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
