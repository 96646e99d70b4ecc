package secretbox

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	xsecretbox "golang.org/x/crypto/nacl/secretbox"
	"golang.org/x/crypto/salsa20/salsa"
)

var allImpls = []int{implGeneric, implAVX2, implAVX512}

// forEachImpl runs f as a subtest once per keystream implementation this CPU
// supports, with impl set to it.
func forEachImpl(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	for _, i := range allImpls {
		t.Run(implNames[i], func(t *testing.T) {
			if !supported(i) {
				t.Skipf("%s not supported on this CPU", implNames[i])
			}
			setImpl(t, i)
			f(t)
		})
	}
}

func setImpl(tb testing.TB, i int) {
	saved := impl
	impl = i
	tb.Cleanup(func() { impl = saved })
}

func TestImplSelected(t *testing.T) {
	t.Logf("selected keystream implementation: %s", implNames[bestImpl])
	if impl != bestImpl {
		t.Errorf("impl = %s, want %s", implNames[impl], implNames[bestImpl])
	}
	if !supported(bestImpl) {
		t.Errorf("selected %s, which this CPU does not support", implNames[bestImpl])
	}
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randKeyNonce(r *rand.Rand) (key [32]byte, nonce [24]byte) {
	copy(key[:], randBytes(r, 32))
	copy(nonce[:], randBytes(r, 24))
	return key, nonce
}

var streamLengths = []int{
	0, 1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 129, 191, 192, 193, 255, 256,
	257, 320, 448, 511, 512, 513, 575, 576, 1000, 1023, 1024, 1025, 1535,
	1536, 1537, 2047, 2048, 2049, 3071, 3072, 3583, 4095, 4096, 4097, 8191,
	8192, 16384 + 448, 65536, 65536 + 1023,
}

var streamCounters = []uint64{
	0, 1, 7, 1 << 20,
	1<<32 - 1, 1<<32 - 2, 1<<32 - 5, 1<<32 - 8, 1<<32 - 9, 1<<32 - 15,
	1<<32 - 16, 1<<32 - 17, 1<<32 - 100, 1<<32 - 1000, 1 << 32,
	0x1234_5678_ffff_fff0, 1<<64 - 1, 1<<64 - 20,
}

// TestKeyStream compares the raw keystream with x/crypto's.
func TestKeyStream(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for _, ctr := range streamCounters {
			for _, n := range streamLengths {
				var key [32]byte
				var counter [16]byte
				copy(key[:], randBytes(r, 32))
				copy(counter[:8], randBytes(r, 8))
				binary.LittleEndian.PutUint64(counter[8:], ctr)
				saved := counter

				src := randBytes(r, n)
				want := make([]byte, n)
				salsa.XORKeyStream(want, src, &counter, &key)

				// Out of place, with guard octets after dst.
				dst := make([]byte, n+64)
				for i := range dst {
					dst[i] = 0xa5
				}
				xorKeyStream(dst[:n], src, &counter, &key)
				if !bytes.Equal(dst[:n], want) {
					t.Fatalf("counter %#x, length %d: keystream differs from x/crypto at octet %d",
						ctr, n, firstDiff(dst[:n], want))
				}
				for i, b := range dst[n:] {
					if b != 0xa5 {
						t.Fatalf("counter %#x, length %d: wrote past dst (octet %d)", ctr, n, n+i)
					}
				}
				if counter != saved {
					t.Fatalf("counter %#x, length %d: counter modified", ctr, n)
				}

				// In place.
				xorKeyStream(src, src, &counter, &key)
				if !bytes.Equal(src, want) {
					t.Fatalf("counter %#x, length %d: in-place keystream differs at octet %d",
						ctr, n, firstDiff(src, want))
				}
			}
		}
	})
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkSealOpen seals and opens msg with both x/crypto and this package and
// compares everything.
func checkSealOpen(t *testing.T, r *rand.Rand, msg []byte) {
	t.Helper()
	key, nonce := randKeyNonce(r)
	want := xsecretbox.Seal(nil, msg, &nonce, &key)

	got := Seal(nil, msg, &nonce, &key)
	if !bytes.Equal(got, want) {
		t.Fatalf("length %d: Seal differs from x/crypto at octet %d", len(msg), firstDiff(got, want))
	}

	// Appending to a prefix, with and without spare capacity.
	prefix := randBytes(r, 1+r.IntN(20))
	for _, extra := range []int{0, len(msg) + Overhead + 7} {
		out := append(make([]byte, 0, len(prefix)+extra), prefix...)
		got = Seal(out, msg, &nonce, &key)
		if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want) {
			t.Fatalf("length %d: Seal appending to %d octets (cap %d) is wrong", len(msg), len(prefix), cap(out))
		}
	}

	// In place: the message sits Overhead octets into the buffer.
	buf := make([]byte, Overhead+len(msg))
	copy(buf[Overhead:], msg)
	got = Seal(buf[:0], buf[Overhead:], &nonce, &key)
	if !bytes.Equal(got, want) {
		t.Fatalf("length %d: in-place Seal differs at octet %d", len(msg), firstDiff(got, want))
	}

	plain, ok := Open(nil, want, &nonce, &key)
	if !ok || !bytes.Equal(plain, msg) {
		t.Fatalf("length %d: Open failed (ok=%v) or differs at octet %d", len(msg), ok, firstDiff(plain, msg))
	}
	out := append([]byte(nil), prefix...)
	plain, ok = Open(out, want, &nonce, &key)
	if !ok || !bytes.Equal(plain[:len(prefix)], prefix) || !bytes.Equal(plain[len(prefix):], msg) {
		t.Fatalf("length %d: Open appending to a prefix is wrong", len(msg))
	}

	// In place: the message replaces the cipher text.
	box := append([]byte(nil), want...)
	plain, ok = Open(box[Overhead:Overhead], box, &nonce, &key)
	if !ok || !bytes.Equal(plain, msg) {
		t.Fatalf("length %d: in-place Open failed (ok=%v) or differs at octet %d", len(msg), ok, firstDiff(plain, msg))
	}
}

// TestSealOpen compares Seal and Open with x/crypto's for every length up
// to 5000 and a few large ones.
func TestSealOpen(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(3, 4))
		for n := 0; n <= 5000; n++ {
			checkSealOpen(t, r, randBytes(r, n))
		}
		for _, n := range []int{
			chunkSize - 32, chunkSize - 31, chunkSize + 32, 2*chunkSize + 32 + 200,
			64 << 10, 64<<10 + 1, 1<<20 + 13,
		} {
			checkSealOpen(t, r, randBytes(r, n))
		}
	})
}

func TestOverlapPanics(t *testing.T) {
	var key [32]byte
	var nonce [24]byte
	buf := make([]byte, 1000)
	msg := buf[100:200]
	box := buf[300 : 300+len(msg)+Overhead]
	Seal(box[:0], msg, &nonce, &key)
	mustPanic := func(name string, f func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", name)
			}
		}()
		f()
	}
	// Seal's cipher text must start exactly at the message, or not overlap it.
	mustPanic("Seal over the message", func() { Seal(buf[:100], msg, &nonce, &key) })
	mustPanic("Seal tag over the message", func() { Seal(buf[:90], msg, &nonce, &key) })
	mustPanic("Seal cipher text inside the message", func() { Seal(buf[:101], msg, &nonce, &key) })
	mustPanic("Seal cipher text before the message", func() { Seal(buf[:83], msg, &nonce, &key) })
	// Open's plain text must start exactly at the cipher text, or not
	// overlap the box.
	mustPanic("Open over the tag", func() { Open(buf[:300], box, &nonce, &key) })
	mustPanic("Open before the cipher text", func() { Open(buf[:250], box, &nonce, &key) })
	mustPanic("Open inside the cipher text", func() { Open(buf[:317], box, &nonce, &key) })
	if _, ok := Open(buf[:316], box, &nonce, &key); !ok {
		t.Errorf("in-place Open failed")
	}
}

// TestOpenRejects flips every bit of boxes (a sample of bits for long ones)
// and checks that Open fails without touching out.
func TestOpenRejects(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(5, 6))
		for _, n := range []int{0, 1, 31, 32, 33, 100, 700, 3000, 70000} {
			key, nonce := randKeyNonce(r)
			msg := randBytes(r, n)
			box := Seal(nil, msg, &nonce, &key)
			bits := len(box) * 8
			for i := 0; i < bits; i++ {
				if bits > 10000 && i >= 8*Overhead+64 && r.IntN(100) != 0 {
					continue
				}
				bad := append([]byte(nil), box...)
				bad[i/8] ^= 1 << (i % 8)

				out := make([]byte, 3, 3+len(box))
				for j := range out[:cap(out)] {
					out[:cap(out)][j] = 0x5a
				}
				plain, ok := Open(out, bad, &nonce, &key)
				if ok || plain != nil {
					t.Fatalf("length %d: Open accepted a box with bit %d flipped", n, i)
				}
				for j, b := range out[:cap(out)] {
					if b != 0x5a {
						t.Fatalf("length %d, bit %d: failed Open wrote out[%d]", n, i, j)
					}
				}
			}
			// Wrong nonce, wrong key, truncation.
			nonce[23] ^= 1
			if _, ok := Open(nil, box, &nonce, &key); ok {
				t.Fatalf("length %d: opened with the wrong nonce", n)
			}
			nonce[23] ^= 1
			key[0] ^= 1
			if _, ok := Open(nil, box, &nonce, &key); ok {
				t.Fatalf("length %d: opened with the wrong key", n)
			}
			key[0] ^= 1
			for _, cut := range []int{1, Overhead, len(box)} {
				if cut > len(box) {
					continue
				}
				if _, ok := Open(nil, box[:len(box)-cut], &nonce, &key); ok {
					t.Fatalf("length %d: opened a box cut by %d", n, cut)
				}
			}
		}
	})
}

func TestAllocs(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		var key [32]byte
		var nonce [24]byte
		msg := make([]byte, 70000)
		box := make([]byte, 0, len(msg)+Overhead)
		plain := make([]byte, 0, len(msg))
		sealed := Seal(nil, msg, &nonce, &key)
		if a := testing.AllocsPerRun(10, func() { Seal(box, msg, &nonce, &key) }); a != 0 {
			t.Errorf("Seal allocates %v times", a)
		}
		if a := testing.AllocsPerRun(10, func() { Open(plain, sealed, &nonce, &key) }); a != 0 {
			t.Errorf("Open allocates %v times", a)
		}
	})
}

// FuzzSealOpen compares Seal and Open with x/crypto's, under every
// implementation this CPU supports.
func FuzzSealOpen(f *testing.F) {
	f.Add(make([]byte, 32), make([]byte, 24), []byte("hello"), uint8(0))
	f.Fuzz(func(t *testing.T, keyb, nonceb, msg []byte, flip uint8) {
		var key [32]byte
		var nonce [24]byte
		copy(key[:], keyb)
		copy(nonce[:], nonceb)
		want := xsecretbox.Seal(nil, msg, &nonce, &key)
		for _, i := range allImpls {
			if !supported(i) {
				continue
			}
			impl = i
			got := Seal(nil, msg, &nonce, &key)
			if !bytes.Equal(got, want) {
				impl = bestImpl
				t.Fatalf("%s: Seal differs from x/crypto at octet %d", implNames[i], firstDiff(got, want))
			}
			plain, ok := Open([]byte{1}, got, &nonce, &key)
			if !ok || plain[0] != 1 || !bytes.Equal(plain[1:], msg) {
				impl = bestImpl
				t.Fatalf("%s: Open of a sealed box failed", implNames[i])
			}
			// The same box from a prefix and the rest, opened in two steps.
			np := min(int(flip)%33, len(msg))
			if sp := SealPrefixed(nil, msg[:np], msg[np:], &nonce, &key); !bytes.Equal(sp, want) {
				impl = bestImpl
				t.Fatalf("%s: SealPrefixed differs from x/crypto at octet %d", implNames[i], firstDiff(sp, want))
			}
			head, rest := make([]byte, np), make([]byte, len(msg)-np)
			if !VerifyHead(head, got, &nonce, &key) {
				impl = bestImpl
				t.Fatalf("%s: VerifyHead refused a sealed box", implNames[i])
			}
			DecryptAt(rest, got, np, &nonce, &key)
			if !bytes.Equal(append(head, rest...), msg) {
				impl = bestImpl
				t.Fatalf("%s: VerifyHead and DecryptAt differ from the message", implNames[i])
			}
			// One flipped bit (chosen by flip) must not open, as in x/crypto.
			bad := append([]byte(nil), got...)
			bad[int(flip)%len(bad)] ^= 1 << (flip % 8)
			p1, ok1 := Open(nil, bad, &nonce, &key)
			_, ok2 := xsecretbox.Open(nil, bad, &nonce, &key)
			if ok1 || ok2 || p1 != nil || VerifyHead(head, bad, &nonce, &key) {
				impl = bestImpl
				t.Fatalf("%s: a box with a flipped bit opened (ours %v, x/crypto %v)", implNames[i], ok1, ok2)
			}
		}
		impl = bestImpl
	})
}

func benchSizes() []int { return []int{64 << 10, 1 << 20} }

func benchImpls(b *testing.B, f func(b *testing.B, seal func(out, m []byte, n *[24]byte, k *[32]byte) []byte,
	open func(out, box []byte, n *[24]byte, k *[32]byte) ([]byte, bool))) {
	for _, i := range []int{implAVX512, implAVX2, implGeneric} {
		b.Run(implNames[i], func(b *testing.B) {
			if !supported(i) {
				b.Skipf("%s not supported", implNames[i])
			}
			setImpl(b, i)
			f(b, Seal, Open)
		})
	}
	b.Run("xcrypto", func(b *testing.B) { f(b, xsecretbox.Seal, xsecretbox.Open) })
}

func benchSeal(b *testing.B, size int) {
	benchImpls(b, func(b *testing.B, seal func([]byte, []byte, *[24]byte, *[32]byte) []byte,
		_ func([]byte, []byte, *[24]byte, *[32]byte) ([]byte, bool)) {
		var key [32]byte
		var nonce [24]byte
		msg := make([]byte, size)
		out := make([]byte, 0, size+Overhead)
		b.SetBytes(int64(size))
		for b.Loop() {
			seal(out, msg, &nonce, &key)
		}
	})
}

func benchOpen(b *testing.B, size int) {
	benchImpls(b, func(b *testing.B, _ func([]byte, []byte, *[24]byte, *[32]byte) []byte,
		open func([]byte, []byte, *[24]byte, *[32]byte) ([]byte, bool)) {
		var key [32]byte
		var nonce [24]byte
		box := xsecretbox.Seal(nil, make([]byte, size), &nonce, &key)
		out := make([]byte, 0, size)
		b.SetBytes(int64(size))
		for b.Loop() {
			if _, ok := open(out, box, &nonce, &key); !ok {
				b.Fatal("open failed")
			}
		}
	})
}

func BenchmarkSeal64K(b *testing.B) { benchSeal(b, 64<<10) }
func BenchmarkSeal1M(b *testing.B)  { benchSeal(b, 1<<20) }
func BenchmarkOpen64K(b *testing.B) { benchOpen(b, 64<<10) }
func BenchmarkOpen1M(b *testing.B)  { benchOpen(b, 1<<20) }

// BenchmarkSmall covers handshake-sized boxes, where the vector cores are
// not used.
func BenchmarkSeal100(b *testing.B) { benchSeal(b, 100) }

// BenchmarkKeyStream measures the bare keystream over 64 KiB.
func BenchmarkKeyStream(b *testing.B) {
	for _, i := range []int{implAVX512, implAVX2, implGeneric} {
		b.Run(implNames[i], func(b *testing.B) {
			if !supported(i) {
				b.Skipf("%s not supported", implNames[i])
			}
			setImpl(b, i)
			var key [32]byte
			var counter [16]byte
			buf := make([]byte, 64<<10)
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				xorKeyStream(buf, buf, &counter, &key)
			}
		})
	}
	b.Run("xcrypto", func(b *testing.B) {
		var key [32]byte
		var counter [16]byte
		buf := make([]byte, 64<<10)
		b.SetBytes(int64(len(buf)))
		for b.Loop() {
			salsa.XORKeyStream(buf, buf, &counter, &key)
		}
	})
}

// checkSplit checks SealPrefixed against x/crypto's Seal of prefix and
// message together, sealing both aside and in place, and VerifyHead plus
// DecryptAt (in pieces cut at cut, aside and in place) against the message.
func checkSplit(t *testing.T, r *rand.Rand, prefix, msg []byte, cut int) {
	t.Helper()
	key, nonce := randKeyNonce(r)
	want := xsecretbox.Seal(nil, append(append([]byte(nil), prefix...), msg...), &nonce, &key)
	if got := SealPrefixed([]byte{9}, prefix, msg, &nonce, &key); got[0] != 9 || !bytes.Equal(got[1:], want) {
		t.Fatalf("SealPrefixed(prefix %d, message %d) differs from x/crypto at octet %d", len(prefix), len(msg), firstDiff(got[1:], want))
	}
	// In place: the message already lies where its cipher text goes.
	buf := make([]byte, Overhead+len(prefix)+len(msg))
	copy(buf[Overhead+len(prefix):], msg)
	if got := SealPrefixed(buf[:0], prefix, buf[Overhead+len(prefix):], &nonce, &key); !bytes.Equal(got, want) {
		t.Fatalf("SealPrefixed in place (prefix %d, message %d) differs at octet %d", len(prefix), len(msg), firstDiff(got, want))
	}

	head := make([]byte, min(len(prefix), 32))
	if !VerifyHead(head, want, &nonce, &key) || !bytes.Equal(head, prefix[:len(head)]) {
		t.Fatalf("VerifyHead: %v, head %x, want %x", VerifyHead(head, want, &nonce, &key), head, prefix)
	}
	plain := append(append([]byte(nil), prefix...), msg...)
	cut = min(cut, len(plain))
	out := make([]byte, len(plain))
	DecryptAt(out[:cut], want, 0, &nonce, &key)
	DecryptAt(out[cut:], want, cut, &nonce, &key)
	if !bytes.Equal(out, plain) {
		t.Fatalf("DecryptAt cut at %d of %d differs at octet %d", cut, len(plain), firstDiff(out, plain))
	}
	inPlace := append([]byte(nil), want...)
	DecryptAt(inPlace[Overhead+cut:], inPlace, cut, &nonce, &key)
	if !bytes.Equal(inPlace[Overhead+cut:], plain[cut:]) {
		t.Fatalf("DecryptAt in place from %d of %d differs", cut, len(plain))
	}
	bad := append([]byte(nil), want...)
	bad[r.IntN(len(bad))] ^= 1 << r.IntN(8)
	h := []byte{0x5a}[:len(head)&1]
	if VerifyHead(h, bad, &nonce, &key) || (len(h) == 1 && h[0] != 0x5a) {
		t.Fatal("VerifyHead accepted a box with a flipped bit, or wrote into head")
	}
}

func TestSealPrefixedVerifyHeadDecryptAt(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(5, 6))
		for _, np := range []int{0, 1, 31, 32} {
			for n := 0; n <= 1200; n += 1 + n/16 {
				checkSplit(t, r, randBytes(r, np), randBytes(r, n), r.IntN(n+np+1))
			}
			for _, n := range []int{chunkSize - 1, chunkSize + 33, 1<<20 + 13} {
				checkSplit(t, r, randBytes(r, np), randBytes(r, n), r.IntN(n))
				checkSplit(t, r, randBytes(r, np), randBytes(r, n), 0)
			}
		}
	})
}

func TestSealPrefixedOverlapPanics(t *testing.T) {
	key, nonce := randKeyNonce(rand.New(rand.NewPCG(7, 8)))
	buf := make([]byte, 4096)
	for name, f := range map[string]func(){
		"message under the prefix's cipher text": func() { SealPrefixed(buf[:0], []byte{1}, buf[Overhead:100], &nonce, &key) },
		"prefix in the output":                   func() { SealPrefixed(buf[:0], buf[Overhead:Overhead+1], buf[1000:1100], &nonce, &key) },
		"prefix too long":                        func() { SealPrefixed(nil, make([]byte, 33), nil, &nonce, &key) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}
