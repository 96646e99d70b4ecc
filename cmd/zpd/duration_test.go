package main

import (
	"testing"
	"time"
)

func TestDayDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"7d": 7 * 24 * time.Hour, "1d12h": 36 * time.Hour, "90m": 90 * time.Minute, "0": 0, "2s": 2 * time.Second,
	} {
		var d time.Duration
		if err := (dayDuration{&d}).Set(in); err != nil || d != want {
			t.Errorf("%q: %v %v, want %v", in, d, err, want)
		}
	}
	for _, bad := range []string{"d", "xd", "7d7", "-", "1w"} {
		var d time.Duration
		if err := (dayDuration{&d}).Set(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	d := 14 * 24 * time.Hour
	if s := (dayDuration{&d}).String(); s != "14d" {
		t.Errorf("String %q", s)
	}
}
