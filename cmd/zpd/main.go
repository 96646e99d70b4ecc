// Command zpd: see internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/zpipes/zp/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli.MainZPD(ctx, os.Args[1:], cli.System())
	stop()
	os.Exit(code)
}
