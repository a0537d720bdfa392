package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
)

func newReloadCmd(g *globals) *cobra.Command {
	var target adminTarget
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Make the running daemon reload its configuration, and say whether it took",
		Long: `reload asks the running daemon over its admin socket (or, with --admin-url, its
HTTPS admin endpoint) to reload its configuration, as SIGHUP does, and waits
for the outcome: the new generation, or why it was refused (the configuration
in force stays). It takes the admin role at global scope. Exit status 0 when
the reload took, 1 when it was refused (a refusal of the caller too, which says
why), 3 when no daemon answers.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := target.resolve(g.configPath, "reload", g.stderr); err != nil {
				return err
			}
			ans, err := target.call(cmd.Context(), 2*time.Minute, http.MethodPost, "/reload", 1<<20)
			if err != nil {
				return exitError{code: 3, msg: fmt.Sprintf("gatehouse reload: %v", err)}
			}
			if ans.code != http.StatusOK {
				return ans.refusal("reload")
			}
			var out struct {
				Generation uint64 `json:"generation"`
			}
			if err := json.Unmarshal(ans.body, &out); err != nil {
				return fmt.Errorf("bad answer: %w", err)
			}
			fmt.Fprintf(g.stdout, "configuration reloaded: generation %d in force\n", out.Generation)
			return nil
		},
	}
	target.flags(cmd.Flags())
	return cmd
}

func newSessionsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "sessions",
		Short: "Drain or kill a tenant's (or one environment's) live sessions on the running daemon",
		Long: `SCOPE is tenant:ID or tenant:ID/ENVIRONMENT.

drain (publisher) ends the scope's sessions gracefully: HTTP connections
between requests close at once; an HTTP/1 connection busy with a request
finishes it and closes after its next response (Connection: close); tcp and
terminal sessions, HTTP/2 and upgraded connections, and anything still open
when --grace runs out are closed then. New sessions are not refused: clients
reconnect (to this node or another).

kill (admin) closes the scope's sessions at once.

A tenant-scoped principal may act on its own tenant (or environment) only.`,
	}
	c.AddCommand(sessionsActionCmd(g, "drain"), sessionsActionCmd(g, "kill"))
	return c
}

func sessionsActionCmd(g *globals, action string) *cobra.Command {
	var target adminTarget
	var grace time.Duration
	short := "Close SCOPE's sessions now"
	if action == "drain" {
		short = "End SCOPE's sessions gracefully: at their next request boundary, the rest after --grace"
	}
	cmd := &cobra.Command{
		Use:   action + " SCOPE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := "sessions " + action
			if err := target.resolve(g.configPath, name, g.stderr); err != nil {
				return err
			}
			q := url.Values{"scope": {args[0]}}
			if action == "drain" {
				q.Set("grace", grace.String())
			}
			ans, err := target.call(cmd.Context(), 30*time.Second, http.MethodPost, "/sessions/"+action+"?"+q.Encode(), 1<<20)
			if err != nil {
				return exitError{code: 3, msg: fmt.Sprintf("gatehouse %s: %v", name, err)}
			}
			if ans.code != http.StatusOK {
				return ans.refusal(name)
			}
			var res daemon.SessionsResult
			if err := json.Unmarshal(ans.body, &res); err != nil {
				return fmt.Errorf("bad answer: %w", err)
			}
			if action == "drain" {
				fmt.Fprintf(g.stdout, "%s: %d sessions draining (idle ones closed now, the rest at their next request or within %s)\n", res.Scope, res.Sessions, res.Grace)
			} else {
				fmt.Fprintf(g.stdout, "%s: %d sessions closed\n", res.Scope, res.Sessions)
			}
			return nil
		},
	}
	if action == "drain" {
		cmd.Flags().DurationVar(&grace, "grace", 30*time.Second, "how long sessions may run on before they are closed (at most 1h)")
	}
	target.flags(cmd.Flags())
	return cmd
}
