// Command zpc copies files to and from hosts through zpd: see internal/cli.
package main

import (
	"context"
	"os"

	"github.com/zpipes/zp/internal/cli"
)

func main() {
	// zpc handles INT, TERM and HUP itself (a clean stop that resumes).
	os.Exit(cli.MainZPC(context.Background(), os.Args[1:], cli.System()))
}
