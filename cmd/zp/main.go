// Command zp runs commands on remote hosts through zpd: see internal/cli.
package main

import (
	"context"
	"os"

	"github.com/zpipes/zp/internal/cli"
)

func main() {
	// No signal context: zp forwards INT, TERM and HUP to the remote
	// command instead of dying of them (internal/cli/zp.go).
	os.Exit(cli.MainZP(context.Background(), os.Args[1:], cli.System()))
}
