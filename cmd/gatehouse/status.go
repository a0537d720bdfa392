package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON, ready bool
	var socket string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask the running daemon what it enforces, on one screen (--json for machines)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ready {
				return checkReady(cmd.Context(), g.configPath, socket, timeout)
			}
			if socket == "" {
				cfg, err := config.Peek(g.configPath)
				if err != nil {
					fmt.Fprintf(g.stderr, "gatehouse status: configuration not read (%v); trying the default socket\n", err)
					cfg = config.Defaults()
				}
				socket = cfg.AdminSocket
			}
			raw, st, err := fetchStatus(cmd.Context(), socket)
			if err != nil {
				return exitError{code: 3, msg: fmt.Sprintf("gatehouse status: no answer from the daemon on %s: %v", socket, err)}
			}
			if asJSON {
				_, err := g.stdout.Write(raw)
				return err
			}
			return printStatus(g.stdout, st, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	cmd.Flags().StringVar(&socket, "socket", "", "admin socket (default: admin_socket of the configuration)")
	cmd.Flags().BoolVar(&ready, "ready", false, "print nothing; exit 0 if the daemon answers ready, 1 otherwise (for keepalived's track_script)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "with --ready: the longest wait for the daemon's answer")
	cmd.MarkFlagsMutuallyExclusive("ready", "json")
	return cmd
}

// checkReady asks the daemon on its admin socket whether it is ready, as
// /readyz would answer, within timeout. It prints nothing: anything but a
// ready answer (no configuration, no socket, no daemon, a daemon that
// hangs, a refusal) is exit 1, so a track_script fails closed.
func checkReady(ctx context.Context, configPath, socket string, timeout time.Duration) error {
	notReady := exitError{code: 1}
	if timeout <= 0 {
		return notReady
	}
	if socket == "" {
		cfg, err := config.Peek(configPath)
		if err != nil {
			return notReady
		}
		socket = cfg.AdminSocket
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://gatehouse/ready", nil)
	if err != nil {
		return notReady
	}
	resp, err := adminClient(socket, 0).Do(req)
	if err != nil {
		return notReady
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return notReady
	}
	return nil
}

// adminClient talks HTTP to the daemon on its admin socket; timeout 0
// leaves the bound to the request's context.
func adminClient(socket string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
}

func fetchStatus(ctx context.Context, socket string) ([]byte, *daemon.Status, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://gatehouse/status", nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := adminClient(socket, 5*time.Second).Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("%s", resp.Status)
	}
	var st daemon.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, fmt.Errorf("bad status: %w", err)
	}
	return raw, &st, nil
}

func printStatus(w io.Writer, st *daemon.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "gatehouse %s, pid %d, up %s, generation %d\n", st.Version, st.PID, now.Sub(st.Started).Round(time.Second), st.Generation)
	if !st.Ready {
		fmt.Fprintln(tw, "NOT READY (/readyz answers 503):")
		for _, why := range st.NotReady {
			fmt.Fprintf(tw, "  - %s\n", why)
		}
	}
	for _, w := range st.Warnings {
		fmt.Fprintf(tw, "WARNING: %s\n", w)
	}
	if st.Generation == 0 {
		fmt.Fprintln(tw, "no policy in force yet")
		return tw.Flush()
	}
	xdpMode := st.XDPMode
	if st.XDPMode != "off" {
		xdpMode += " on " + st.Interface
	}
	fmt.Fprintf(tw, "xdp\t%s\tnftables %s\tmode %s\n", xdpMode, onOff(st.NFTables), st.Mode)
	if st.ReloadError > 0 {
		fmt.Fprintf(tw, "reloads refused\t%d (see the log)\n", st.ReloadError)
	}
	fmt.Fprintln(tw, "\nAdmitted prefixes\tIPv4\tIPv6")
	if len(st.Held) > 0 {
		// The counts below are those of the other layers.
		if h := st.HeldAdmitted; h != nil {
			fmt.Fprintf(tw, "  held by %s: %s\t%d\t%d\n", strings.Join(st.Held, ", "), h.Source, h.V4, h.V6)
		} else {
			fmt.Fprintf(tw, "  held by %s: the previous run's, as it left them\t?\t?\n", strings.Join(st.Held, ", "))
		}
		fmt.Fprintln(tw, "  the other layers:")
	}
	for _, a := range st.Admitted {
		fmt.Fprintf(tw, "  %s\t%d\t%d\n", a.Source, a.V4, a.V6)
	}
	if len(st.Feeds) > 0 {
		fmt.Fprintln(tw, "\nFeeds\tserial\tlast success\tlast attempt")
		for _, f := range st.Feeds {
			age := "never"
			if !f.LastSuccess.IsZero() {
				age = now.Sub(f.LastSuccess).Round(time.Second).String() + " ago"
			}
			serial := fmt.Sprint(f.Serial)
			switch {
			case !f.Verified:
				serial = "NONE"
			case f.Expired:
				serial += " EXPIRED (still enforced)"
			case f.Previous:
				serial += " (the previous release)"
			}
			last := f.LastResult
			if last == "" {
				last = "none yet"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", f.Name, serial, age, last)
			if f.Problem != "" {
				fmt.Fprintf(tw, "    %s\n", f.Problem)
			} else if f.LastError != "" {
				fmt.Fprintf(tw, "    %s\n", f.LastError)
			}
			if f.Quarantined != 0 {
				fmt.Fprintf(tw, "    serial %d held in quarantine: gatehouse feed accept %s\n", f.Quarantined, f.Name)
			}
			if f.Deferred != 0 {
				fmt.Fprintf(tw, "    serial %d verified; not saved until the kernel layers take it (they keep the previous run's ranges until every feed has a release)\n", f.Deferred)
			}
		}
	}
	if st.Role != "" && st.Role != "appliance" {
		peer := "tenant"
		if st.Role == "connector" {
			peer = "gateway"
		}
		fmt.Fprintf(tw, "\nTunnels (%s)\t%s\tup\n", st.Role, peer)
		if len(st.Tunnels) == 0 {
			fmt.Fprintln(tw, "  none up")
		}
		for _, tu := range st.Tunnels {
			fmt.Fprintf(tw, "  \t%s\t%d\n", tu.Peer, tu.Up)
		}
	}
	printBGP(tw, st.BGP)
	fmt.Fprintln(tw, "\nTenants\tsessions")
	for _, t := range st.Tenants {
		fmt.Fprintf(tw, "  %s\t%d\n", t.ID, t.Sessions)
		if len(t.Environments) > 1 || (len(t.Environments) == 1 && t.Environments[0].Name != policy.DefaultEnvironment) {
			for _, e := range t.Environments {
				fmt.Fprintf(tw, "    %s/%s\t%d\n", t.ID, e.Name, e.Sessions)
			}
		}
	}
	fmt.Fprintln(tw, "\nListeners")
	printListeners(tw, st.Listeners, nil)
	if len(st.Certs) > 0 {
		fmt.Fprintln(tw, "\nExpiring soonest")
		for i, c := range st.Certs {
			if i == 5 {
				break
			}
			fmt.Fprintf(tw, "  %s %s\t%s\t%s\n", c.Kind, c.Name, c.Expires.UTC().Format(time.DateOnly), untilText(c.Expires.Sub(now)))
		}
	}
	printRefusals(tw, st.Refusals)
	if len(st.Counters) > 0 {
		fmt.Fprintln(tw, "\nCounters")
		for _, c := range st.Counters {
			fmt.Fprintf(tw, "  %s\t%.0f\n", strings.TrimPrefix(c.Name, "gatehouse_"), c.Value)
		}
	}
	return tw.Flush()
}

// untilText says how long until an expiry, in days once it is more than two.
func untilText(d time.Duration) string {
	switch {
	case d < 0:
		return "EXPIRED " + (-d).Round(time.Minute).String() + " ago"
	case d < 48*time.Hour:
		return "in " + d.Round(time.Minute).String()
	}
	return fmt.Sprintf("in %d days", int(d.Hours()/24))
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
