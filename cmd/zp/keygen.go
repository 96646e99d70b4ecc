package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/zpipes/zp/client"
	"github.com/zpipes/zp/internal/cli"
)

type keygenOptions struct {
	force bool
	io    *cli.IO
}

func newKeygenCmd(io *cli.IO) *cobra.Command {
	opts := &keygenOptions{io: io}
	c := &cobra.Command{
		Use:   "keygen",
		Short: "create this client's CURVE key pair ($ZP_CONFIG/id_curve)",
		Long: `keygen creates the client identity: id_curve (secret, mode 0600) and id_curve.pub in
$ZP_CONFIG (default ~/.config/zp). It refuses to overwrite an existing key unless --force.
Add the printed public key to ~USER/.config/zp/authorized_keys on the hosts you want to reach
(or to the file given to zpd --authorized-keys).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return keygenRun(opts) },
	}
	c.Flags().BoolVar(&opts.force, "force", false, "overwrite an existing key pair")
	return c
}

func keygenRun(opts *keygenOptions) error {
	dir := cli.ConfigDir(opts.io.Getenv)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return cli.WithCode(cli.ExitFailure, err)
	}
	secret, public := cli.IdentityPaths(dir)
	kp, err := client.GenerateKeyPair()
	if err != nil {
		return cli.WithCode(cli.ExitFailure, err)
	}
	if err := client.WriteKeyFiles(secret, public, kp, opts.force); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return cli.WithCode(cli.ExitFailure, fmt.Errorf("%s already exists; use --force to replace it (clients using it will lose access)", secret))
		}
		return cli.WithCode(cli.ExitFailure, err)
	}
	fmt.Fprintf(opts.io.Err, "zp: wrote %s and %s\n", secret, public)
	fmt.Fprintln(opts.io.Out, kp.Public.String())
	fmt.Fprintln(opts.io.Err, "fingerprint:", kp.Public.Fingerprint())
	return nil
}
