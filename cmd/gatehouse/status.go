package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	var target adminTarget
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Ask the running daemon what it enforces, on one screen (--json for machines)",
		Long: `status asks the running daemon over its admin socket (or, with --admin-url,
its HTTPS admin endpoint) what it enforces. What it shows is cut down to the
caller's grants (access.grants): a tenant viewer sees its own tenant's sessions,
routes, counters and certificates only. A refusal says what was refused and why
and exits 1; no answer exits 3.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ready {
				return checkReady(cmd.Context(), g.configPath, &target, timeout)
			}
			if err := target.resolve(g.configPath, "status", g.stderr); err != nil {
				return err
			}
			raw, st, err := fetchStatusFrom(cmd.Context(), &target)
			if err != nil {
				var ee exitError
				if errors.As(err, &ee) {
					return ee
				}
				if errors.Is(err, errNoAnswer) {
					return exitError{code: 3, msg: "gatehouse status: " + err.Error()}
				}
				return exitError{code: 3, msg: fmt.Sprintf("gatehouse status: no answer from the daemon %s: %v", target.where(), err)}
			}
			if asJSON {
				_, err := g.stdout.Write(raw)
				return err
			}
			return printStatus(g.stdout, st, time.Now())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	target.flags(cmd.Flags())
	cmd.Flags().BoolVar(&ready, "ready", false, "print nothing; exit 0 if the daemon answers ready, 1 otherwise (for keepalived's track_script)")
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "with --ready: the longest wait for the daemon's answer")
	cmd.MarkFlagsMutuallyExclusive("ready", "json")
	return cmd
}

// checkReady asks the daemon on its admin socket whether it is ready, as
// /readyz would answer, within timeout. It prints nothing: anything but a
// ready answer (no configuration, no socket, no daemon, a daemon that
// hangs, a refusal) is exit 1, so a track_script fails closed.
func checkReady(ctx context.Context, configPath string, target *adminTarget, timeout time.Duration) error {
	notReady := exitError{code: 1}
	if timeout <= 0 {
		return notReady
	}
	if target.socket == "" && target.url == "" {
		cfg, err := config.Peek(configPath)
		if err != nil {
			return notReady
		}
		target.socket = cfg.AdminSocket
	}
	if err := target.resolve(configPath, "status", io.Discard); err != nil {
		return notReady
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ans, err := target.call(ctx, 0, "GET", "/ready", 64<<10)
	if err != nil || ans.code != http.StatusOK {
		return notReady
	}
	return nil
}

// fetchStatus asks the daemon on socket for its status.
func fetchStatus(ctx context.Context, socket string) ([]byte, *daemon.Status, error) {
	return fetchStatusFrom(ctx, &adminTarget{socket: socket})
}

// fetchStatusFrom asks target for the status; a refusal is an exitError.
func fetchStatusFrom(ctx context.Context, target *adminTarget) ([]byte, *daemon.Status, error) {
	ans, err := target.call(ctx, 5*time.Second, "GET", "/status", 4<<20)
	if err != nil {
		return nil, nil, err
	}
	if ans.code == http.StatusForbidden {
		return nil, nil, ans.refusal("status")
	}
	if ans.code != http.StatusOK {
		return nil, nil, fmt.Errorf("%d %s", ans.code, strings.TrimSpace(string(ans.body)))
	}
	var st daemon.Status
	if err := json.Unmarshal(ans.body, &st); err != nil {
		return nil, nil, fmt.Errorf("bad status: %w", err)
	}
	return ans.body, &st, nil
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
	printPrivsep(tw, st.Privsep, now)
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
	printFleet(tw, st.Fleet, time.Now())
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

// printPrivsep says whether the proxies run in unprivileged workers, and
// lists them.
func printPrivsep(w io.Writer, ps *daemon.PrivsepStatus, now time.Time) {
	if ps == nil {
		return
	}
	if !ps.On {
		fmt.Fprintln(w, "privsep\tOFF: the proxies run in this privileged process (development only)")
		return
	}
	fmt.Fprintf(w, "privsep\ton: %d workers as %s\n", len(ps.Workers), ps.User)
	fmt.Fprintln(w, "  worker\tpid\tup\trestarts\tsessions")
	for _, wk := range ps.Workers {
		if wk.PID == 0 || wk.Problem != "" {
			fmt.Fprintf(w, "  %d\t%d\t-\t%d\t-\t%s\n", wk.Index, wk.PID, wk.Restarts, wk.Problem)
			continue
		}
		fmt.Fprintf(w, "  %d\t%d\t%s\t%d\t%d\n", wk.Index, wk.PID, now.Sub(wk.Started).Round(time.Second), wk.Restarts, wk.Sessions)
	}
}
