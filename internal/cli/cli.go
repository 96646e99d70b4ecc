// Package cli holds what the command trees of zp, zpc and zpd (each in its
// cmd/ directory) share: I/O streams, the one place where errors become
// exit codes, the root command's settings, the log handler, and (conn.go,
// keys.go) the flags and host-key prompts with which zp and zpc reach a
// zpd through the public client API.
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// IO is what a command reads and writes; tests substitute buffers.
type IO struct {
	In       io.Reader
	Out, Err io.Writer
	// InFile and OutFile are set when In and Out are the process's own
	// stdin and stdout (for TTY checks).
	InFile, OutFile, ErrFile *os.File
	Getenv                   func(string) string
}

// System returns the process's own streams and environment.
func System() *IO {
	return &IO{In: os.Stdin, Out: os.Stdout, Err: os.Stderr,
		InFile: os.Stdin, OutFile: os.Stdout, ErrFile: os.Stderr, Getenv: os.Getenv}
}

// Exit codes of zp's own failures, as ssh's.
const (
	ExitFailure = 255 // zp could not do its job (connection, auth, usage)
	ExitUsage   = 255
)

// exitError carries an exit code chosen by a command.
type exitError struct {
	code int
	err  error // printed unless nil
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// WithCode makes err exit with code.
func WithCode(code int, err error) error { return &exitError{code: code, err: err} }

// CodeOf returns the exit code WithCode gave err (or an error it wraps).
func CodeOf(err error) (int, bool) {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code, true
	}
	return 0, false
}

// ExitCode maps an error from a command tree to the process exit code and
// prints it, prefixed with the program name.
func ExitCode(prog string, errw io.Writer, err error, fallback int) int {
	if err == nil {
		return 0
	}
	code := fallback
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		err = ee.err
	}
	if err != nil {
		msg := err.Error()
		if !strings.HasPrefix(msg, prog+": ") {
			msg = prog + ": " + msg
		}
		fmt.Fprintln(errw, msg)
	}
	return code
}

// NewRoot builds a root command with the settings every tree shares.
func NewRoot(use, short string) *cobra.Command {
	c := &cobra.Command{
		Use:           use,
		Short:         short,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	c.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return WithCode(ExitUsage, fmt.Errorf("%v (see %s --help)", err, c.CommandPath()))
	})
	c.CompletionOptions.DisableDefaultCmd = true
	return c
}

// NewLogger makes the process's slog handler.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
