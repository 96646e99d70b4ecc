package fleetcli

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

// AgentKeys pins each selected agent's key under NAME@HUB in known_hosts
// (trust on first use, as for hosts: asked on a terminal, or
// --accept-new) and returns the key to expect from each; an agent whose
// key is not trusted gets an error instead.
func AgentKeys(conn *cli.ConnFlags, io *cli.IO, hub string, agents []client.Agent) (map[string]client.PublicKey, map[string]error, error) {
	kh := &client.KnownHosts{Path: cli.KnownHostsPath(io.Getenv)}
	keys := map[string]client.PublicKey{}
	fails := map[string]error{}
	var unknown []client.Agent
	var unknownKeys []client.PublicKey
	for _, a := range agents {
		listed, err := client.ParsePublicKey(a.Key)
		if err != nil {
			fails[a.Name] = fmt.Errorf("the hub lists a malformed key: %v", err)
			continue
		}
		name := a.Name + "@" + hub
		pinned, line, found, err := kh.Lookup(name)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case !found:
			unknown = append(unknown, a)
			unknownKeys = append(unknownKeys, listed)
		case pinned != listed:
			fails[a.Name] = fmt.Errorf("AGENT KEY CHANGED: %s is pinned as %s, the hub lists %s; the hub or the agent may be an impostor. If the change is expected, remove line %d of %s", name, pinned.Fingerprint(), listed.Fingerprint(), line, kh.Path)
		default:
			keys[a.Name] = listed
		}
	}
	if len(unknown) == 0 {
		return keys, fails, nil
	}
	ok := conn.AcceptNew
	if !ok {
		var err error
		ok, err = confirmAgents(hub, unknown, unknownKeys)
		if err != nil {
			names := make([]string, 0, 5)
			for i, a := range unknown {
				if i == 4 {
					names = append(names, "…")
					break
				}
				names = append(names, a.Name+" "+a.Fingerprint)
			}
			return nil, nil, fmt.Errorf("the keys of %d agent(s) of %s are not known yet (%s); check them against 'zpd --print-key' on the agents, then rerun with --accept-new to pin the keys the hub lists", len(unknown), hub, strings.Join(names, ", "))
		}
	}
	for i, a := range unknown {
		if !ok {
			fails[a.Name] = fmt.Errorf("key of %s@%s not accepted", a.Name, hub)
			continue
		}
		if err := kh.Add(a.Name+"@"+hub, unknownKeys[i]); err != nil {
			return nil, nil, fmt.Errorf("pinning agent keys: %w", err)
		}
		keys[a.Name] = unknownKeys[i]
	}
	if ok && !conn.Quiet {
		fmt.Fprintf(io.Err, "zp: permanently added %d agent key(s) listed by %s to %s\n", len(unknown), hub, kh.Path)
	}
	return keys, fails, nil
}

// confirmAgents asks once, on the terminal, whether to pin the keys the
// hub lists for agents not seen before; without a terminal it fails.
func confirmAgents(hub string, agents []client.Agent, keys []client.PublicKey) (bool, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil || !term.IsTerminal(int(tty.Fd())) {
		if tty != nil {
			tty.Close()
		}
		return false, fs.ErrNotExist
	}
	defer tty.Close()
	fmt.Fprintf(tty, "The hub '%s' lists %d agent(s) whose keys are not known yet:\n", hub, len(agents))
	for i, a := range agents {
		if i == 20 {
			fmt.Fprintf(tty, "  … and %d more\n", len(agents)-20)
			break
		}
		fmt.Fprintf(tty, "  %s  CURVE %s\n", a.Name, keys[i].Fingerprint())
	}
	fmt.Fprint(tty, "Trust these keys and pin them (yes/no)? ")
	answer, _ := bufio.NewReader(tty).ReadString('\n')
	answer = strings.ToLower(strings.TrimSpace(answer))
	return answer == "yes" || answer == "y", nil
}
