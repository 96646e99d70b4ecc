// Command zpc copies files to and from hosts through zpd. Its cobra tree
// is zpc.go, on the public client API; internal/cli holds what it shares
// with zp and zpd.
package main

import (
	"context"
	"os"

	"github.com/zpipes/zp/internal/cli"
)

func main() {
	// zpc handles INT, TERM and HUP itself (a clean stop that resumes).
	cli.TuneGC(0)
	os.Exit(MainZPC(context.Background(), os.Args[1:], cli.System()))
}
