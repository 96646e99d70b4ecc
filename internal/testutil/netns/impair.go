package netns

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// DefaultLimit is netem's default queue length, in packets per direction.
const DefaultLimit = 1000

// Impairment describes what the link does to packets. Every field applies to
// each direction separately, as netem on both ends of the link does: a
// one-way Delay d adds 2d to a round trip, and a Loss p drops a packet with
// probability p on the way out and again on the way back. The zero value is
// a clean link.
type Impairment struct {
	Delay  time.Duration // one-way latency added to every packet
	Jitter time.Duration // Delay varies uniformly within ±Jitter
	Loss   float64       // probability in [0, 1] that a packet is dropped
	Rate   int64         // bandwidth in bits per second; 0 is unlimited
	Limit  int           // packets queued before tail drop; 0 means DefaultLimit
}

// Args returns the netem arguments equivalent to im, for
// "tc qdisc replace dev DEV root netem ARGS…".
func (im Impairment) Args() []string {
	var args []string
	if im.Limit > 0 {
		args = append(args, "limit", strconv.Itoa(im.Limit))
	}
	if im.Delay > 0 || im.Jitter > 0 {
		args = append(args, "delay", formatTime(im.Delay))
		if im.Jitter > 0 {
			args = append(args, formatTime(im.Jitter))
		}
	}
	if im.Loss > 0 {
		args = append(args, "loss", strconv.FormatFloat(im.Loss*100, 'f', -1, 64)+"%")
	}
	if im.Rate > 0 {
		args = append(args, "rate", strconv.FormatInt(im.Rate, 10)+"bit")
	}
	return args
}

func (im Impairment) validate() error {
	switch {
	case im.Delay < 0 || im.Jitter < 0:
		return fmt.Errorf("netns: negative delay or jitter")
	case im.Jitter > im.Delay:
		return fmt.Errorf("netns: jitter %v larger than delay %v", im.Jitter, im.Delay)
	case im.Loss < 0 || im.Loss > 1 || math.IsNaN(im.Loss):
		return fmt.Errorf("netns: loss %v outside [0, 1]", im.Loss)
	case im.Rate < 0 || im.Limit < 0:
		return fmt.Errorf("netns: negative rate or limit")
	}
	return nil
}

// ParseNetem reads netem arguments as tc(8) takes them into an Impairment.
// It understands the subset the userspace link implements:
//
//	limit PACKETS
//	delay TIME [JITTER]
//	loss [random] PERCENT
//	rate RATE
//
// TIME is tc's: 50ms, 1.5s, 100us, 20msec (a bare number is microseconds).
// PERCENT is 5% or a fraction such as 0.05. RATE is tc's: 10mbit, 1gbit,
// 500kbps (bytes), 2mibit; a bare number is bits per second. Anything else
// (correlation, distribution, duplicate, corrupt, reorder, slot, ecn…) is an
// error.
func ParseNetem(args ...string) (Impairment, error) {
	var im Impairment
	// Accept "delay 50ms" as one argument as well as two.
	var toks []string
	for _, a := range args {
		toks = append(toks, strings.Fields(a)...)
	}
	for i := 0; i < len(toks); i++ {
		kw := toks[i]
		next := func() (string, error) {
			if i+1 >= len(toks) {
				return "", fmt.Errorf("netns: netem %q needs a value", kw)
			}
			i++
			return toks[i], nil
		}
		switch kw {
		case "limit":
			v, err := next()
			if err != nil {
				return im, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return im, fmt.Errorf("netns: netem limit %q: want a positive packet count", v)
			}
			im.Limit = n
		case "delay", "latency":
			v, err := next()
			if err != nil {
				return im, err
			}
			if im.Delay, err = parseTime(v); err != nil {
				return im, err
			}
			if i+1 < len(toks) {
				if j, err := parseTime(toks[i+1]); err == nil {
					im.Jitter = j
					i++
					if i+1 < len(toks) && isNumberLike(toks[i+1]) {
						return im, fmt.Errorf("netns: netem delay correlation %q is not supported", toks[i+1])
					}
				}
			}
		case "loss", "drop":
			v, err := next()
			if err != nil {
				return im, err
			}
			if v == "random" {
				if v, err = next(); err != nil {
					return im, err
				}
			} else if v == "state" || v == "gemodel" {
				return im, fmt.Errorf("netns: netem loss %s is not supported", v)
			}
			if im.Loss, err = parsePercent(v); err != nil {
				return im, err
			}
			if i+1 < len(toks) && isNumberLike(toks[i+1]) {
				return im, fmt.Errorf("netns: netem loss correlation %q is not supported", toks[i+1])
			}
		case "rate":
			v, err := next()
			if err != nil {
				return im, err
			}
			if im.Rate, err = parseRate(v); err != nil {
				return im, err
			}
			if i+1 < len(toks) && isNumberLike(toks[i+1]) {
				return im, fmt.Errorf("netns: netem rate packet overhead %q is not supported", toks[i+1])
			}
		default:
			return im, fmt.Errorf("netns: netem %q is not supported by the userspace link (supported: limit, delay TIME [JITTER], loss PERCENT, rate RATE)", kw)
		}
	}
	return im, im.validate()
}

func isNumberLike(s string) bool {
	return s != "" && (s[0] >= '0' && s[0] <= '9' || s[0] == '.' || s[0] == '-')
}

// parseTime reads a tc time: a number with an optional unit, microseconds
// when bare.
func parseTime(s string) (time.Duration, error) {
	num, unit := splitNumber(s)
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || num == "" {
		return 0, fmt.Errorf("netns: bad time %q", s)
	}
	var scale float64
	switch strings.ToLower(unit) {
	case "s", "sec", "secs":
		scale = float64(time.Second)
	case "ms", "msec", "msecs":
		scale = float64(time.Millisecond)
	case "", "us", "usec", "usecs":
		scale = float64(time.Microsecond)
	case "ns", "nsec", "nsecs":
		scale = 1
	default:
		return 0, fmt.Errorf("netns: bad time unit in %q", s)
	}
	return time.Duration(math.Round(v * scale)), nil
}

// parsePercent reads "5%" or a fraction "0.05".
func parsePercent(s string) (float64, error) {
	num, pct := s, false
	if strings.HasSuffix(s, "%") {
		num, pct = strings.TrimSuffix(s, "%"), true
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("netns: bad percentage %q", s)
	}
	if pct {
		v /= 100
	}
	if v < 0 || v > 1 || math.IsNaN(v) {
		return 0, fmt.Errorf("netns: percentage %q outside 0..100%%", s)
	}
	return v, nil
}

// parseRate reads a tc rate into bits per second.
func parseRate(s string) (int64, error) {
	num, unit := splitNumber(s)
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 || num == "" {
		return 0, fmt.Errorf("netns: bad rate %q", s)
	}
	mult := map[string]float64{
		"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
		"kibit": 1 << 10, "mibit": 1 << 20, "gibit": 1 << 30, "tibit": 1 << 40,
		"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
		"kibps": 8 << 10, "mibps": 8 << 20, "gibps": 8 << 30, "tibps": 8 << 40,
	}[strings.ToLower(unit)]
	if mult == 0 {
		return 0, fmt.Errorf("netns: bad rate unit in %q", s)
	}
	return int64(math.Round(v * mult)), nil
}

func splitNumber(s string) (num, unit string) {
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	return s[:i], s[i:]
}

// formatTime writes d in a unit tc reads exactly.
func formatTime(d time.Duration) string {
	if d%time.Microsecond != 0 {
		return strconv.FormatInt(int64(d), 10) + "ns"
	}
	return strconv.FormatInt(int64(d/time.Microsecond), 10) + "us"
}
