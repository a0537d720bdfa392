package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/enforcer/nft"
	"github.com/gatehouse-dmz/gatehouse/enforcer/xdp"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
)

func newTeardownCmd(g *globals) *cobra.Command {
	var yes, force, viaDaemon bool
	var pinDir, iface string
	var target adminTarget
	cmd := &cobra.Command{
		Use:   "teardown",
		Short: "Remove the pinned XDP filter and the nftables table: the only way to lift gatehouse's kernel filters",
		Long: `teardown detaches and unpins the XDP program of every interface under the pin
directory (or only --interface) and deletes table inet gatehouse. Traffic is
then no longer filtered by gatehouse. Stop the daemon first: teardown refuses
while a daemon runs, seen on the admin socket or as the process holding the
pinned XDP filter, and also when it cannot tell (no answer on the socket
within 3 seconds, an admin socket it cannot reach). --force tears down anyway,
but a running daemon puts the filters back: the XDP filter within a second,
the table within its reconcile interval (10 seconds), also while it keeps a
previous run's ranges; so --force against a running daemon only opens that
window. Without --yes it asks for confirmation.

With --daemon (over the admin socket) or --admin-url (the HTTPS admin
endpoint) it asks the running daemon instead: the daemon stops its
enforcement loops and proxies (draining sessions within shutdown_grace),
detaches and unpins its XDP filter, deletes table inet gatehouse, writes the
outcome to its audit log, answers what it removed, and exits 0. This takes
the admin role at global scope, and --yes: it opens the gate.

The pin directory comes from --pin-dir, else from the configuration's
enforcement.pin_dir (read even when a file it names is missing), else
/sys/fs/bpf/gatehouse, said on stderr; a configuration that does not load
does not stop a teardown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if viaDaemon || target.url != "" {
				return teardownViaDaemon(cmd.Context(), g, &target, yes)
			}
			socket := target.socket
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
			ifaces := []string{iface}
			if iface == "" {
				var err error
				if ifaces, err = pinnedInterfaces(pinDir); err != nil {
					return err
				}
			}
			running, err := refuseWhileRunning(cmd.Context(), g.stderr, socket, pinDir, ifaces, force)
			if err != nil {
				return err
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
				err := xdp.Teardown(pinDir, i)
				if running != "" && errors.Is(err, syscall.ENOTEMPTY) {
					// The daemon's watch attached and pinned the filter
					// again while the pins were being removed.
					fmt.Fprintf(g.stderr, "gatehouse teardown: %s put the XDP filter on %s back during the teardown\n", running, i)
					continue
				}
				if err != nil {
					errs = append(errs, err)
				}
			}
			if err := nft.Teardown(0); err != nil {
				errs = append(errs, fmt.Errorf("nftables: %w", err))
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			if running != "" {
				fmt.Fprintf(g.stdout, "removed %s; %s puts them back\n", what, running)
				return nil
			}
			fmt.Fprintf(g.stdout, "removed %s\n", what)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.Flags().BoolVar(&force, "force", false, "tear down even while a daemon runs, or when that cannot be told (a running daemon puts the filters back)")
	cmd.Flags().BoolVar(&viaDaemon, "daemon", false, "ask the running daemon (admin socket, or --admin-url) to lift its filters and stop")
	target.flags(cmd.Flags())
	cmd.Flags().StringVar(&pinDir, "pin-dir", "", "bpffs directory the XDP state is pinned under")
	cmd.Flags().StringVar(&iface, "interface", "", "only this interface's XDP filter")
	return cmd
}

// refuseWhileRunning refuses a teardown while a daemon runs, unless force:
// the daemon would put its filters back at once, so the teardown would only
// open a window, and /readyz would not show it. A daemon is seen answering
// on the admin socket, or holding a pinned XDP link (whatever the
// configuration now says of the socket); an admin socket that neither
// answers nor is plainly absent (no such file, connection refused) may hide
// a busy daemon and is refused too. It returns who runs ("" for nobody),
// for the messages of a forced teardown.
func refuseWhileRunning(ctx context.Context, stderr io.Writer, socket, pinDir string, ifaces []string, force bool) (string, error) {
	var running, unsure string
	switch st, err := askStatus(ctx, socket); {
	case socket == "":
		fmt.Fprintln(stderr, "gatehouse teardown: admin_socket is off: a running daemon is seen only by the XDP filter it holds")
	case err == nil:
		running = fmt.Sprintf("a gatehouse daemon (pid %d) answers on %s and", st.PID, socket)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		// Nobody listens there.
	default:
		unsure = fmt.Sprintf("the admin socket %s does not answer (%v): a daemon may be running, busy", socket, err)
	}
	for _, i := range ifaces {
		if running != "" {
			break
		}
		pids, err := xdp.LinkHolders(pinDir, i)
		switch {
		case len(pids) > 0:
			running, unsure = fmt.Sprintf("the process %d holding the XDP filter on %s (a running daemon)", pids[0], i), ""
		case err != nil && unsure == "":
			unsure = fmt.Sprintf("whether a process holds the XDP filter on %s cannot be told (%v)", i, err)
		}
	}
	switch {
	case running != "" && !force:
		return "", exitError{code: 1, msg: "gatehouse teardown: " + running + " would put the filters back " +
			"(XDP within a second, the nftables table within its reconcile interval): stop it first (systemctl stop gatehouse); " +
			"--force tears down anyway; --daemon asks the daemon to lift them and stop. Nothing removed."}
	case running != "":
		fmt.Fprintf(stderr, "gatehouse teardown: --force: %s will put the filters back\n", running)
	case unsure != "" && !force:
		return "", exitError{code: 1, msg: "gatehouse teardown: " + unsure + "; stop the daemon first, or --force. Nothing removed."}
	case unsure != "":
		fmt.Fprintf(stderr, "gatehouse teardown: --force: %s\n", unsure)
	}
	return running, nil
}

// askStatus asks the daemon on socket for its status, within 3 seconds.
func askStatus(ctx context.Context, socket string) (*daemon.Status, error) {
	if socket == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, st, err := fetchStatus(ctx, socket)
	return st, err
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

// teardownViaDaemon asks the running daemon to lift its kernel filters and
// stop (POST /teardown), and says what it removed.
func teardownViaDaemon(ctx context.Context, g *globals, target *adminTarget, yes bool) error {
	if !yes {
		return exitError{code: 2, msg: "gatehouse teardown: asking the daemon needs --yes: it lifts the XDP filter and the nftables table and stops, so traffic is no longer filtered. Nothing removed."}
	}
	if err := target.resolve(g.configPath, "teardown", g.stderr); err != nil {
		return err
	}
	// The daemon drains its sessions (shutdown_grace) before it answers.
	ans, err := target.call(ctx, 10*time.Minute, http.MethodPost, "/teardown?confirm=yes", 1<<20)
	if err != nil {
		return exitError{code: 3, msg: fmt.Sprintf("gatehouse teardown: %v", err)}
	}
	if ans.code != http.StatusOK {
		return ans.refusal("teardown")
	}
	var res daemon.TeardownResult
	if err := json.Unmarshal(ans.body, &res); err != nil {
		return fmt.Errorf("bad answer: %w", err)
	}
	fmt.Fprintf(g.stdout, "the daemon %s removed %s and stopped; traffic is no longer filtered by gatehouse\n", target.where(), listOr(res.Removed, "nothing"))
	return nil
}
