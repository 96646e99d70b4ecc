package main

import (
	"strconv"
	"strings"
	"time"
)

// dayDuration is a flag value like time.Duration that also takes days
// ("7d", "1d12h"), as retention settings are usually written.
type dayDuration struct{ d *time.Duration }

func (v dayDuration) String() string {
	if v.d == nil {
		return "0s"
	}
	d := *v.d
	if d > 0 && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}

func (v dayDuration) Set(s string) error {
	var days int64
	if i := strings.Index(s, "d"); i > 0 {
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil {
			return err
		}
		days, s = n, s[i+1:]
	}
	var rest time.Duration
	if s != "" {
		var err error
		if rest, err = time.ParseDuration(s); err != nil {
			return err
		}
	}
	*v.d = time.Duration(days)*24*time.Hour + rest
	return nil
}

func (dayDuration) Type() string { return "duration" }
