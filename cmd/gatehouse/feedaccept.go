package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/internal/daemon"
)

func feedAcceptCmd() *cobra.Command {
	var stateDir string
	var target adminTarget
	c := &cobra.Command{
		Use:   "accept NAME",
		Short: "Accept the release of feed NAME the daemon holds in quarantine",
		Long: `The daemon holds a release in quarantine when it changes the covered address
space by more than max_shrink or max_grow, and records it in state_dir. accept
records the admin's consent to exactly that release (by the SHA-256 of its
manifest) in state_dir; the running daemon applies it within seconds, and a
daemon started later applies it when it fetches the same release again. A newer
release is not covered by this consent.

accept asks the running daemon over its admin socket (or, with --admin-url, its
HTTPS admin endpoint), which checks the publisher role at global scope and
writes the audit log. With --state-dir it writes the consent there itself, for
a daemon that is stopped (it needs write access to state_dir, and is not in the
audit log).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if stateDir == "" {
				return acceptOnDaemon(cmd, &target, name)
			}
			acc, err := daemon.AcceptQuarantined(stateDir, name, time.Now())
			if errors.Is(err, daemon.ErrNothingToAccept) {
				return exitError{code: 1, msg: "gatehouse: " + err.Error()}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "accepted feed %s release serial %d (manifest sha256 %s); the daemon applies it on its next check\n",
				name, acc.Serial, acc.Digest)
			return nil
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", "", "write the consent into this state directory directly (a stopped daemon's), not through the daemon")
	target.flags(c.Flags())
	c.MarkFlagsMutuallyExclusive("state-dir", "socket")
	c.MarkFlagsMutuallyExclusive("state-dir", "admin-url")
	return c
}

// acceptOnDaemon asks the running daemon to accept feed name's release in
// quarantine.
func acceptOnDaemon(cmd *cobra.Command, target *adminTarget, name string) error {
	if err := target.resolve(feedConfigPath(cmd), "feed accept", cmd.ErrOrStderr()); err != nil {
		return err
	}
	ans, err := target.call(cmd.Context(), 30*time.Second, http.MethodPost, "/feeds/accept?"+url.Values{"feed": {name}}.Encode(), 1<<20)
	if err != nil {
		return exitError{code: 3, msg: fmt.Sprintf("gatehouse feed accept: %v (for a stopped daemon: --state-dir)", err)}
	}
	if ans.code != http.StatusOK {
		return ans.refusal("feed accept")
	}
	var acc daemon.Accepted
	if err := json.Unmarshal(ans.body, &acc); err != nil {
		return fmt.Errorf("bad answer: %w", err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "accepted feed %s release serial %d (manifest sha256 %s); the daemon applies it within seconds\n",
		acc.Feed, acc.Serial, acc.Digest)
	return nil
}
