// Command zp runs commands on remote hosts through zpd. Its cobra tree is
// in this directory (zp.go, jobs.go, fleet*.go, keygen.go), on the public
// client API; internal/cli holds what it shares with zpc and zpd.
package main

import (
	"context"
	"os"

	"github.com/zpipes/zp/internal/cli"
)

func main() {
	// No signal context: zp forwards INT, TERM and HUP to the remote
	// command instead of dying of them (zp.go).
	cli.TuneGC(0)
	os.Exit(MainZP(context.Background(), os.Args[1:], cli.System()))
}
