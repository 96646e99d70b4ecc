// Package bufpool recycles the large buffers of zp's bulk paths: the data
// of DATA and CHUNK messages, 64 KiB to 4 MiB each. Allocating one per
// message costs its zeroing and, once the collector has returned the pages,
// a page fault per 4 KiB: profiles of a 1 GiB pipe on a 2-CPU VM showed
// runtime.memclrNoHeapPointers at a fifth to a quarter of zp's and zpd's CPU
// (bench/README.md).
//
// Get returns a buffer whose capacity is a size class; Put gives it back
// when its last user is done with it. A buffer that is never Put is simply
// collected, so an owner that cannot tell when it is done (a payload handed
// on to code that may keep it) leaves it alone: only Put is unsafe, never a
// missing Put.
package bufpool

import "sync"

const (
	minShift = 16 // 64 KiB: below, Go's small-object allocator is cheap
	maxShift = 22 // 4 MiB: the largest frame zp accepts
	classes  = maxShift - minShift + 1
)

var pools [classes]sync.Pool

// class returns the size class for n octets, or -1 if n is outside the pooled range.
func class(n int) int {
	if n <= 0 || n > 1<<maxShift {
		return -1
	}
	c := 0
	for 1<<(minShift+c) < n {
		c++
	}
	return c
}

// Min is the smallest length Get takes from a pool; shorter buffers are
// plain allocations.
const Min = 1 << minShift

// Get returns a buffer of length n. Its contents are undefined (a recycled
// buffer is not zeroed): the caller overwrites all n octets.
func Get(n int) []byte {
	c := class(n)
	if n < Min || c < 0 {
		return make([]byte, n)
	}
	if p, _ := pools[c].Get().(*[]byte); p != nil {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(minShift+c))
}

// Put recycles b, which Get returned (any reslice of it whose capacity
// runs to the end of the original). The caller and everyone it handed b
// to must be done with it. A slice not of a pooled capacity is ignored.
func Put(b []byte) {
	c := class(cap(b))
	if c < 0 || cap(b) != 1<<(minShift+c) {
		return
	}
	b = b[:cap(b)]
	pools[c].Put(&b)
}
