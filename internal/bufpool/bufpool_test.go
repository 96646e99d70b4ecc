package bufpool

import "testing"

func TestGet(t *testing.T) {
	for _, c := range []struct{ n, cap int }{
		{0, 0}, {100, 100}, {Min - 1, Min - 1}, {Min, Min}, {Min + 1, 2 * Min},
		{1 << 20, 1 << 20}, {1<<20 + 1, 2 << 20}, {4 << 20, 4 << 20}, {4<<20 + 1, 4<<20 + 1},
	} {
		b := Get(c.n)
		if len(b) != c.n || cap(b) != c.cap {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", c.n, len(b), cap(b), c.cap)
		}
	}
}

func TestPutRecycles(t *testing.T) {
	// sync.Pool may drop what it holds at any collection, so look for
	// reuse over several tries rather than once.
	reused := false
	for i := 0; i < 100 && !reused; i++ {
		b := Get(1 << 20)
		b[0] = 42
		p := &b[:1][0]
		Put(b[:10]) // a reslice keeping the capacity is the same buffer
		if c := Get(300 << 10); cap(c) != 512<<10 {
			t.Fatalf("Get(300 KiB) from class %d", cap(c)) // another class: not b
		}
		d := Get(1<<20 - 5)
		reused = &d[:1][0] == p
		if reused && (len(d) != 1<<20-5 || cap(d) != 1<<20) {
			t.Fatalf("recycled buffer: len %d cap %d", len(d), cap(d))
		}
	}
	if !reused {
		t.Fatal("a buffer that was Put was never handed out again")
	}
}

func TestPutIgnoresOthers(t *testing.T) {
	for _, b := range [][]byte{
		make([]byte, 1<<20+1),       // no class
		make([]byte, 100),           // below Min
		make([]byte, 8<<20),         // above the largest class
		make([]byte, 10, 3*(1<<16)), // not a class capacity
	} {
		Put(b)
		for i := 0; i < 10; i++ {
			if g := Get(len(b)); len(b) > 0 && cap(g) > 0 && &g[:1][0] == &b[:1][0] {
				t.Fatalf("Put kept a buffer of cap %d", cap(b))
			}
		}
	}
}
