package subscriber

import "testing"

func TestMeminfoDirty(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		n        uint64
		ok       bool
	}{
		{"both", "MemTotal:       24000000 kB\nDirty:              152 kB\nWriteback:            8 kB\n", 160 << 10, true},
		{"missing writeback", "Dirty:              152 kB\n", 0, false},
		{"no unit", "Dirty: 152\nWriteback: 8 kB\n", 0, false},
		{"garbage", "Dirty: x kB\nWriteback: 8 kB\n", 0, false},
		{"empty", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, ok := meminfoDirty([]byte(tc.in))
			if ok != tc.ok || (ok && n != tc.n) {
				t.Fatalf("meminfoDirty = %d, %v; want %d, %v", n, ok, tc.n, tc.ok)
			}
		})
	}
	if _, ok := systemDirty(); !ok {
		t.Log("/proc/meminfo unreadable here: every batch takes the per-file path")
	}
}
