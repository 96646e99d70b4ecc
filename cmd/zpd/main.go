// Command zpd is zp's daemon (package broker). Its cobra tree is in this
// directory (zpd.go, zpd_fleet.go, signals.go); internal/cli holds what it
// shares with zp and zpc.
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
	code := MainZPD(ctx, os.Args[1:], cli.System())
	stop()
	os.Exit(code)
}
