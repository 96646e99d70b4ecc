package broker

import (
	"testing"
	"time"
)

func TestRateLimit(t *testing.T) {
	r := newRateLimit(50 * time.Millisecond)
	if ok, n := r.allow("a"); !ok || n != 0 {
		t.Fatalf("first: %v %d", ok, n)
	}
	for i := 0; i < 10; i++ {
		if ok, _ := r.allow("a"); ok {
			t.Fatal("a flood got through")
		}
	}
	if ok, _ := r.allow("b"); !ok {
		t.Fatal("another kind was held back")
	}
	time.Sleep(60 * time.Millisecond)
	if ok, n := r.allow("a"); !ok || n != 10 {
		t.Fatalf("after the interval: %v, %d suppressed (want 10)", ok, n)
	}
}
