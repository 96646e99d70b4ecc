package client

import (
	"fmt"
	"net"
	"os/user"
	"strconv"
	"strings"
)

// DefaultPort is zpd's control port; its XPUB and XSUB use the next two.
const DefaultPort = 5750

// Target is where a session goes: a zpd endpoint and the remote user.
type Target struct {
	User     string // empty: the local user name, as ssh does (see RemoteUser)
	Endpoint string // tcp://HOST:PORT or ipc:///PATH
	Host     string // HOST:PORT or the ipc endpoint: for messages and known_hosts
}

// ParseTarget parses [user@]host[:port], [user@]tcp://host:port or
// [user@]ipc:///path. port overrides the port when non-zero.
func ParseTarget(s string, port int) (Target, error) {
	var t Target
	if i := strings.Index(s, "@"); i >= 0 {
		t.User, s = s[:i], s[i+1:]
		if t.User == "" {
			return t, fmt.Errorf("empty user name in %q", s)
		}
	}
	if s == "" {
		return t, fmt.Errorf("missing host")
	}
	if i := strings.Index(s, "://"); i >= 0 {
		scheme, rest := s[:i], s[i+3:]
		switch scheme {
		case "tcp":
			host, p, err := net.SplitHostPort(rest)
			if err != nil {
				return t, fmt.Errorf("bad endpoint %q: want tcp://HOST:PORT", s)
			}
			if port != 0 {
				p = strconv.Itoa(port)
			}
			t.Endpoint = "tcp://" + net.JoinHostPort(host, p)
			t.Host = net.JoinHostPort(host, p)
		case "ipc":
			if !strings.HasPrefix(rest, "/") {
				return t, fmt.Errorf("bad endpoint %q: want ipc:///ABSOLUTE/PATH", s)
			}
			t.Endpoint = s
			t.Host = s
		default:
			return t, fmt.Errorf("unsupported transport %q in %q: zp speaks tcp:// and ipc://", scheme, s)
		}
		return t, nil
	}
	host, p := s, strconv.Itoa(DefaultPort)
	if h, pp, err := net.SplitHostPort(s); err == nil {
		host, p = h, pp
	} else if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		host = s[1 : len(s)-1]
	} else if strings.Count(s, ":") == 1 {
		return t, fmt.Errorf("bad host %q", s)
	}
	if n, err := strconv.Atoi(p); err != nil || n <= 0 || n > 65535 {
		return t, fmt.Errorf("bad port %q", p)
	}
	if port != 0 {
		p = strconv.Itoa(port)
	}
	if host == "" {
		return t, fmt.Errorf("missing host in %q", s)
	}
	t.Endpoint = "tcp://" + net.JoinHostPort(host, p)
	t.Host = net.JoinHostPort(host, p)
	return t, nil
}

// RemoteUser is the user to act as: the explicit one, else the local user
// name (as ssh does).
func (t Target) RemoteUser() string {
	if t.User != "" {
		return t.User
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return ""
}

// hostName is the name of the server in known_hosts and messages.
func (c *Config) hostName() string {
	if c.HostName != "" {
		return c.HostName
	}
	if rest, ok := strings.CutPrefix(c.Endpoint, "tcp://"); ok {
		return rest
	}
	return c.Endpoint
}
