package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/enforcer/nft"
	"github.com/gatehouse-dmz/gatehouse/enforcer/xdp"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

func newTeardownCmd(g *globals) *cobra.Command {
	var yes, force bool
	var pinDir, iface, socket string
	cmd := &cobra.Command{
		Use:   "teardown",
		Short: "Remove the pinned XDP filter and the nftables table: the only way to lift gatehouse's kernel filters",
		Long: `teardown detaches and unpins the XDP program of every interface under the pin
directory (or only --interface) and deletes table inet gatehouse. Traffic is
then no longer filtered by gatehouse. Stop the daemon first: while a daemon
answers on the admin socket, teardown refuses (a running daemon puts the XDP
filter back within a second and the table within its reconcile interval);
--force tears down anyway. Without --yes it asks for confirmation.

The pin directory comes from --pin-dir, else from the configuration's
enforcement.pin_dir (read even when a file it names is missing), else
/sys/fs/bpf/gatehouse, said on stderr; a configuration that does not load
does not stop a teardown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, cfgErr := config.Peek(g.configPath)
			if pinDir == "" {
				pinDir = xdp.DefaultPinDir
				switch {
				case cfgErr != nil:
					fmt.Fprintf(g.stderr, "gatehouse teardown: configuration not read (%v); using pin directory %s\n", cfgErr, pinDir)
				case cfg.Enforcement.PinDir != "":
					pinDir = cfg.Enforcement.PinDir
				}
			}
			if socket == "" {
				socket = config.Defaults().AdminSocket
				if cfgErr == nil {
					socket = cfg.AdminSocket
				}
			}
			if err := refuseWhileRunning(cmd.Context(), g.stderr, socket, force); err != nil {
				return err
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
	cmd.Flags().BoolVar(&force, "force", false, "tear down even while a daemon answers on the admin socket (it puts the filters back)")
	cmd.Flags().StringVar(&socket, "socket", "", "admin socket a running daemon answers on (default: admin_socket of the configuration)")
	cmd.Flags().StringVar(&pinDir, "pin-dir", "", "bpffs directory the XDP state is pinned under")
	cmd.Flags().StringVar(&iface, "interface", "", "only this interface's XDP filter")
	return cmd
}

// refuseWhileRunning refuses a teardown while a daemon answers on the admin
// socket, unless force: the daemon would put its filters back at once, so
// the teardown would only open a window, and /readyz would not show it.
func refuseWhileRunning(ctx context.Context, stderr io.Writer, socket string, force bool) error {
	if socket == "" {
		fmt.Fprintln(stderr, "gatehouse teardown: admin_socket is off, so a running daemon cannot be seen; stop it first")
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, st, err := fetchStatus(ctx, socket)
	if err != nil {
		return nil // nobody answers: no daemon runs there
	}
	if !force {
		return exitError{code: 1, msg: fmt.Sprintf("gatehouse teardown: a gatehouse daemon (pid %d) answers on %s and would put the filters back "+
			"(XDP within a second, the nftables table within its reconcile interval): stop it first (systemctl stop gatehouse); "+
			"--force tears down anyway. Nothing removed.", st.PID, socket)}
	}
	fmt.Fprintf(stderr, "gatehouse teardown: --force: the gatehouse daemon (pid %d) answering on %s will put the filters back\n", st.PID, socket)
	return nil
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
