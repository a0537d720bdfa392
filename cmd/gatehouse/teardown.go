package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/enforcer/nft"
	"github.com/gatehouse-dmz/gatehouse/enforcer/xdp"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

func newTeardownCmd(g *globals) *cobra.Command {
	var yes bool
	var pinDir, iface string
	cmd := &cobra.Command{
		Use:   "teardown",
		Short: "Remove the pinned XDP filter and the nftables table: the only way to lift gatehouse's kernel filters",
		Long: `teardown detaches and unpins the XDP program of every interface under the pin
directory (or only --interface) and deletes table inet gatehouse. Traffic is
then no longer filtered by gatehouse. Stop the daemon first: a running daemon
would put both back on its next reload. Without --yes it asks for confirmation.

The pin directory comes from --pin-dir, else from the configuration's
enforcement.pin_dir (read even when a file it names is missing), else
/sys/fs/bpf/gatehouse, said on stderr; a configuration that does not load
does not stop a teardown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pinDir == "" {
				pinDir = xdp.DefaultPinDir
				cfg, err := config.Peek(g.configPath)
				switch {
				case err != nil:
					fmt.Fprintf(g.stderr, "gatehouse teardown: configuration not read (%v); using pin directory %s\n", err, pinDir)
				case cfg.Enforcement.PinDir != "":
					pinDir = cfg.Enforcement.PinDir
				}
			}
			ifaces := []string{iface}
			if iface == "" {
				var err error
				if ifaces, err = pinnedInterfaces(pinDir); err != nil {
					return err
				}
			}
			what := fmt.Sprintf("table inet gatehouse, and the XDP filter on %s (pinned under %s)", listOr(ifaces, "no interface"), pinDir)
			if !yes {
				ok, err := confirm(cmd.InOrStdin(), g.stdout, "Remove "+what+"? Traffic will no longer be filtered. [y/N] ")
				if err != nil {
					return err
				}
				if !ok {
					return exitError{code: 1, msg: "teardown: nothing removed"}
				}
			}
			var errs []error
			for _, i := range ifaces {
				if err := xdp.Teardown(pinDir, i); err != nil {
					errs = append(errs, err)
				}
			}
			if err := nft.Teardown(0); err != nil {
				errs = append(errs, fmt.Errorf("nftables: %w", err))
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "removed %s\n", what)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.Flags().StringVar(&pinDir, "pin-dir", "", "bpffs directory the XDP state is pinned under")
	cmd.Flags().StringVar(&iface, "interface", "", "only this interface's XDP filter")
	return cmd
}

// pinnedInterfaces lists the interfaces with XDP state under pinDir.
func pinnedInterfaces(pinDir string) ([]string, error) {
	entries, err := os.ReadDir(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("teardown: %w", err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func listOr(list []string, none string) string {
	if len(list) == 0 {
		return none
	}
	return strings.Join(list, ", ")
}

// confirm asks on out and reads a yes from in; a closed input is a no.
func confirm(in io.Reader, out io.Writer, question string) (bool, error) {
	fmt.Fprint(out, question)
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}
