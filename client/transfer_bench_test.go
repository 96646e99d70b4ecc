package client_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/zpipes/zp/broker"
	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/curve"
)

// BenchmarkUploadChunkWindow measures a 256 MiB upload through an
// in-process broker over CURVE on 127.0.0.1 for chunk sizes and credit
// windows, the figures behind the file-transfer defaults (1 MiB, 16 MiB):
//
//	go test -run=^$ -bench=UploadChunkWindow -benchtime=3x ./client/
func BenchmarkUploadChunkWindow(b *testing.B) {
	src := filepath.Join(b.TempDir(), "src")
	f, _ := os.Create(src)
	io.CopyN(f, zeroishReader{}, 256<<20)
	f.Close()
	for _, chunk := range []int{64 << 10, 256 << 10, 1 << 20} {
		for _, window := range []int{2 << 20, 8 << 20, 16 << 20, 32 << 20} {
			b.Run(fmt.Sprintf("chunk=%dK/window=%dM", chunk>>10, window>>20), func(b *testing.B) {
				s, stop := benchSession(b, chunk, window)
				defer stop()
				b.SetBytes(256 << 20)
				for i := 0; i < b.N; i++ {
					dst := filepath.Join(b.TempDir(), "dst")
					st, err := s.Upload(context.Background(), []string{src}, dst, client.TransferOptions{})
					if err != nil || st.Files != 1 {
						b.Fatalf("%v %+v", err, st)
					}
				}
			})
		}
	}
}

type zeroishReader struct{}

func (zeroishReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i * 31)
	}
	return len(p), nil
}

func benchSession(b *testing.B, chunk, window int) (*client.Session, func()) {
	serverKey, _ := curve.GenerateKeyPair()
	clientKey, _ := client.GenerateKeyPair()
	self, _ := broker.CurrentAccount()
	br, err := broker.New(broker.Config{
		Endpoint: "tcp://127.0.0.1:0", StateDir: b.TempDir(), Window: window, Chunk: chunk,
		Mechanism: &curve.Server{Key: serverKey, Authorize: curve.AllowKeys(curve.PublicKey(clientKey.Public))},
		Authorize: func([]byte, string) (*broker.Account, error) { return self, nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- br.Run(ctx) }()
	s, err := client.Dial(context.Background(), client.Config{
		Endpoint: "tcp://" + br.Addr().String(), Chunk: chunk, Window: window,
		Key: &clientKey, ServerKey: client.PublicKey(serverKey.Public),
	})
	if err != nil {
		b.Fatal(err)
	}
	return s, func() { s.Close(); cancel(); <-done }
}
