package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gatehouse-dmz/gatehouse/rules"
)

// refreshWait bounds how long `feed refresh` waits for the daemon: one
// round fetches a manifest, its signatures and files, each within the
// fetch timeout of the feed client.
const refreshWait = 5 * time.Minute

func feedRefreshCmd() *cobra.Command {
	var target adminTarget
	c := &cobra.Command{
		Use:   "refresh [NAME...]",
		Short: "Make the running daemon fetch feeds now (all, or those named) and print what came of each",
		Long: `refresh asks the running daemon, over its admin socket, to fetch and verify the
named feeds (every configured feed when none is named) at once, as its refresh
loop would, and waits for the outcome: an urgent range change need not wait for
feeds[].refresh. Each feed is printed as applied (with its serial), unchanged,
refused (with the reason; the release in force stays), quarantined (applied
only after "gatehouse feed accept NAME"), applied but not saved (state_dir
not writable), or verified but deferred (kernel layers keep a previous run's
ranges until every feed has a release). The round is the daemon's: Ctrl-C
stops the waiting, not the fetch. A feed named twice is fetched once, and a
feed fetched on request less than 5 s ago is not fetched again (its last
outcome is printed, marked so). It takes the publisher role at global scope
(access.grants; root always has it). The exit status is 0 only when every feed
was applied or unchanged, 1 otherwise (a refusal too, which says why), and 3
when no daemon answers.`,
		RunE: func(cmd *cobra.Command, names []string) error {
			if err := target.resolve(feedConfigPath(cmd), "feed refresh", cmd.ErrOrStderr()); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), refreshWait)
			defer cancel()
			out, refused, err := postRefresh(ctx, &target, names)
			switch {
			case err != nil:
				return exitError{code: 3, msg: "gatehouse feed refresh: " + err.Error()}
			case refused != nil:
				return refused
			}
			if !printOutcomes(cmd.OutOrStdout(), out, time.Now()) {
				return exitError{code: 1}
			}
			return nil
		},
	}
	target.flags(c.Flags())
	return c
}

// postRefresh asks the daemon; refused is the daemon's refusal of the
// request itself (an unknown feed, a missing role), err a failure to ask.
func postRefresh(ctx context.Context, target *adminTarget, names []string) (out []rules.Outcome, refused error, err error) {
	q := url.Values{"feed": names}
	ans, err := target.call(ctx, 0, http.MethodPost, "/feeds/refresh?"+q.Encode(), 1<<20)
	if err != nil {
		return nil, nil, err
	}
	if ans.code != http.StatusOK {
		if ans.code == http.StatusForbidden {
			return nil, ans.refusal("feed refresh"), nil
		}
		return nil, exitError{code: 1, msg: "gatehouse feed refresh: " + strings.TrimSpace(string(ans.body))}, nil
	}
	if err := json.Unmarshal(ans.body, &out); err != nil {
		return nil, nil, fmt.Errorf("bad answer: %w", err)
	}
	return out, nil, nil
}

// printOutcomes prints one line per feed and reports whether all are OK.
func printOutcomes(w io.Writer, out []rules.Outcome, now time.Time) bool {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ok := true
	for _, o := range out {
		var line string
		switch o.Result {
		case rules.ResultApplied, rules.ResultAccepted:
			line = fmt.Sprintf("applied serial %d (%d prefixes)", o.Serial, o.Prefixes)
		case rules.ResultUnchanged:
			line = fmt.Sprintf("unchanged (serial %d in force)", o.Serial)
		case rules.ResultDeferred:
			line = fmt.Sprintf("verified serial %d (%d prefixes); not in force in the kernel layers, which keep the previous run's ranges until every feed has a release", o.Serial, o.Prefixes)
		case string(rules.ReasonQuarantined):
			line = fmt.Sprintf("quarantined: serial %d held (%s); gatehouse feed accept %s applies it", o.Serial, strings.TrimPrefix(o.Error, "quarantined: "), o.Feed)
		case string(rules.ReasonStore):
			line = fmt.Sprintf("applied serial %d (%d prefixes) but not saved in state_dir (%s); a restart falls back to the release saved before", o.Serial, o.Prefixes, o.Error)
		case string(rules.ReasonApply):
			line = "verified but not applied: " + strings.TrimPrefix(o.Error, "apply_failed: ") + " (the release in force stays)"
		case string(rules.ReasonMirrorUnsettled):
			line = "mirror in flux: " + o.Error + " (a publish in progress? checked again at the next refresh)"
		case "":
			line = "abandoned: " + o.Error
		default:
			line = "refused: " + o.Error + " (the release in force stays)"
		}
		if o.Reused {
			line += fmt.Sprintf(" [outcome of a refresh %s ago: a feed is fetched on request at most every 5s]", now.Sub(o.At).Round(time.Second))
		}
		ok = ok && o.OK()
		fmt.Fprintf(tw, "%s\t%s\n", o.Feed, line)
	}
	tw.Flush()
	return ok
}
