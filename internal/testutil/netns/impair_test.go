package netns

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseNetem(t *testing.T) {
	ok := []struct {
		args []string
		want Impairment
	}{
		{nil, Impairment{}},
		{[]string{"delay", "50ms"}, Impairment{Delay: 50 * time.Millisecond}},
		{[]string{"delay 50ms 10ms"}, Impairment{Delay: 50 * time.Millisecond, Jitter: 10 * time.Millisecond}},
		{[]string{"delay", "1.5s"}, Impairment{Delay: 1500 * time.Millisecond}},
		{[]string{"delay", "200"}, Impairment{Delay: 200 * time.Microsecond}},
		{[]string{"delay", "20msec", "loss", "5%"}, Impairment{Delay: 20 * time.Millisecond, Loss: 0.05}},
		{[]string{"loss", "random", "0.5%"}, Impairment{Loss: 0.005}},
		{[]string{"loss", "0.1"}, Impairment{Loss: 0.1}},
		{[]string{"rate", "10mbit"}, Impairment{Rate: 10_000_000}},
		{[]string{"rate", "1kbps"}, Impairment{Rate: 8000}},
		{[]string{"rate", "2mibit"}, Impairment{Rate: 2 << 20}},
		{[]string{"rate", "9600"}, Impairment{Rate: 9600}},
		{[]string{"limit", "50", "delay", "5ms", "rate", "1gbit"}, Impairment{Limit: 50, Delay: 5 * time.Millisecond, Rate: 1e9}},
	}
	for _, c := range ok {
		got, err := ParseNetem(c.args...)
		if err != nil || got != c.want {
			t.Errorf("ParseNetem(%q) = %+v, %v; want %+v", c.args, got, err, c.want)
		}
	}
	bad := [][]string{
		{"delay"},
		{"delay", "fast"},
		{"delay", "10ms", "5ms", "25%"},
		{"delay", "5ms", "10ms"}, // jitter > delay
		{"loss", "150%"},
		{"loss", "5%", "25%"},
		{"loss", "state", "1", "2"},
		{"rate", "lots"},
		{"limit", "0"},
		{"duplicate", "1%"},
		{"reorder", "25%"},
		{"corrupt", "0.1%"},
		{"slot", "10ms"},
	}
	for _, args := range bad {
		if got, err := ParseNetem(args...); err == nil {
			t.Errorf("ParseNetem(%q) = %+v, want an error", args, got)
		}
	}
}

func TestImpairmentArgsRoundTrip(t *testing.T) {
	for _, im := range []Impairment{
		{},
		{Delay: 50 * time.Millisecond},
		{Delay: 30 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.025, Rate: 8_000_000, Limit: 300},
		{Delay: 1500 * time.Nanosecond, Loss: 1},
	} {
		args := im.Args()
		got, err := ParseNetem(args...)
		if err != nil || !reflect.DeepEqual(got, im) {
			t.Errorf("%+v → %q → %+v, %v", im, strings.Join(args, " "), got, err)
		}
	}
}
