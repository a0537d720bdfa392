package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// FeedConfigs converts the feeds and rules sections of a configuration to
// what the rules package takes. The configuration was validated already
// (reserved feed names included: config.ReservedFeedNames); an unknown
// selection key or a bad public key is caught by rules.NewManager.
func FeedConfigs(cfg *config.Config) ([]rules.FeedConfig, rules.Guards, error) {
	g := rules.Guards{MinPrefixV4: cfg.Rules.MinPrefix.V4, MinPrefixV6: cfg.Rules.MinPrefix.V6}
	for i, s := range cfg.Rules.ReservedExempt {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, rules.Guards{}, fmt.Errorf("rules.reserved_exempt[%d]: %w", i, err)
		}
		g.ReservedExempt = append(g.ReservedExempt, p)
	}
	if err := g.Validate(); err != nil {
		return nil, rules.Guards{}, fmt.Errorf("rules: %w", err)
	}
	var out []rules.FeedConfig
	for _, f := range cfg.Feeds {
		out = append(out, rules.FeedConfig{
			Name: f.Name, Source: f.Source, Format: f.Format, Select: f.Select,
			Keys: f.MinisignKeys, Threshold: f.Threshold, Refresh: f.Refresh,
			MaxShrink: deref(f.MaxShrink), MaxGrow: deref(f.MaxGrow), CAFile: f.CA,
		})
	}
	return out, g, nil
}

// deref is *v, or 0 (the rules default) for a key left out.
func deref(v *float64) float64 {
	if v == nil {
		return 0
	}
	return *v
}

// feedState is one feed manager and the configuration it was built from.
type feedState struct {
	mgr    *rules.Manager // nil when no feed is configured
	cfgs   []rules.FeedConfig
	guards rules.Guards
}

// newFeedState builds the feed manager of cfg; carry is the one it
// replaces (nil at start): its releases in force are verified again and
// kept (see rules.ManagerConfig.Carry).
func (d *Daemon) newFeedState(cfg *config.Config, carry *rules.Manager) (*feedState, error) {
	cfgs, guards, err := FeedConfigs(cfg)
	if err != nil {
		return nil, err
	}
	fs := &feedState{cfgs: cfgs, guards: guards}
	if len(cfgs) == 0 {
		return fs, nil
	}
	fs.mgr, err = rules.NewManager(rules.ManagerConfig{
		Logger: d.opts.Logger, StateDir: cfg.StateDir, Feeds: cfgs, Guards: guards, Carry: carry,
	})
	if err != nil {
		return nil, fmt.Errorf("feeds: %w", err)
	}
	return fs, nil
}

func (fs *feedState) sameConfig(cfgs []rules.FeedConfig, guards rules.Guards) bool {
	return reflect.DeepEqual(fs.cfgs, cfgs) && reflect.DeepEqual(fs.guards, guards)
}

// current returns each feed's last-known-good set, loaded and re-verified
// from state_dir when the manager was built.
func (fs *feedState) current() map[string][]netip.Prefix {
	if fs.mgr == nil {
		return map[string][]netip.Prefix{}
	}
	return fs.mgr.Current()
}

// useFeeds puts a feed manager, and the sets the generation in force was
// built from, in place of the old ones. Called with d.mu held (or before Run).
func (d *Daemon) useFeeds(fs *feedState, sets map[string][]netip.Prefix) {
	if old := d.feeds.Load(); old != nil && old.mgr != nil {
		d.reg.Unregister(old.mgr)
	}
	if fs.mgr != nil {
		if err := d.reg.Register(fs.mgr); err != nil {
			d.log.Error("feed metrics not registered", "err", err)
		}
	}
	d.feeds.Store(fs)
	d.feedSets = sets
}

// restartFeeds tells runFeeds to pick up the manager now in place.
func (d *Daemon) restartFeeds() {
	select {
	case d.feedRestart <- struct{}{}:
	default: // a restart is already pending; it will pick up the new one
	}
}

// onFeedUpdate is called by a feed manager with a verified new set. It
// builds and applies a whole new generation; the manager persists the
// release only when this returns nil. While kernel layers keep a previous
// run's ranges and the generation still lacks a feed, the release reaches
// the other layers only, and ErrDeferred tells the manager that it is not
// in force in the kernel. The generation that ends such a hold is held to
// the coverage guard against what the kernel keeps (guardRelease), unless
// the admin accepted the release.
func (d *Daemon) onFeedUpdate(mgr *rules.Manager, up rules.Update) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if fs := d.feeds.Load(); fs == nil || fs.mgr != mgr {
		return errors.New("feed manager was replaced by a reload")
	}
	sets := maps.Clone(d.feedSets)
	sets[up.Feed] = up.Prefixes
	cfg := d.cfg.Load()
	p, err := d.build(cfg, sets)
	var pl plan
	if err == nil {
		pl, err = d.plan(cfg, p)
	}
	if err == nil && pl.release && !up.Accepted {
		// A refusal (quarantined, as the coverage guard would) is the feed
		// manager's to log and count, as are the outcomes below.
		err = d.guardRelease(cfg, p)
	}
	if err == nil {
		err = d.applyRanges(pl, d.current.Load())
	}
	if err != nil {
		return err
	}
	d.feedSets = sets
	if h := d.hold.Load(); h != nil {
		return fmt.Errorf("%w: kernel layers %s keep the previous run's ranges until feeds %s have a verified release",
			rules.ErrDeferred, strings.Join(h.layers, ", "), strings.Join(missingFeeds(p), ", "))
	}
	d.log.Debug("policy applied", "feed", up.Feed, "serial", up.Serial, "generation", p.Generation,
		"admitted_v4", len(p.Admitted.V4), "admitted_v6", len(p.Admitted.V6))
	return nil
}

// runFeeds runs the feed manager in force, restarting it when a reload
// replaces it, until ctx ends.
func (d *Daemon) runFeeds(ctx context.Context) error {
	for {
		d.mu.Lock()
		fs := d.feeds.Load()
		d.mu.Unlock()
		mctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		if fs.mgr != nil {
			go func() {
				done <- fs.mgr.Run(mctx, func(up rules.Update) error { return d.onFeedUpdate(fs.mgr, up) })
			}()
		}
		select {
		case <-ctx.Done():
			cancel()
			if fs.mgr != nil {
				<-done
			}
			return nil
		case <-d.feedRestart:
			cancel()
			if fs.mgr != nil {
				<-done
			}
		case err := <-done:
			cancel()
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("feeds: %w", err)
			}
			// The manager stopped by itself: wait for a reload or the end.
			select {
			case <-ctx.Done():
				return nil
			case <-d.feedRestart:
			}
		}
	}
}

// ErrNoFeeds is returned by RefreshFeeds when no feed is configured.
var ErrNoFeeds = errors.New("no feed is configured")

// refreshGap is the least time between two fetches of one feed on request:
// within it, the outcome of the last one is answered again (an admin, a
// script in a loop, or many names given twice cannot make the daemon
// hammer the mirror).
const refreshGap = 5 * time.Second

// refresher remembers, per feed, the last round run on request and the
// one running now.
type refresher struct {
	mu     sync.Mutex
	last   map[string]rules.Outcome
	flight map[string]chan struct{} // closed when the round ends; its outcome is then in last
}

// RefreshFeeds fetches the named feeds now (every configured feed when
// names is empty; a name given twice counts once), each as its refresh
// loop would, applies what verifies, and returns what came of each, in the
// order asked. A name the configuration lacks is an error before anything
// is fetched. A feed refreshed less than refreshGap ago, or being refreshed
// now, is not fetched again: its outcome is answered (Reused). The rounds
// belong to the daemon, not to the request: when ctx ends (the client gave
// up) RefreshFeeds returns ctx's error and the rounds complete, counted and
// recorded as any other.
func (d *Daemon) RefreshFeeds(ctx context.Context, names []string) ([]rules.Outcome, error) {
	fs := d.feeds.Load()
	if fs == nil || fs.mgr == nil {
		return nil, ErrNoFeeds
	}
	var configured []string
	for _, st := range fs.mgr.States() {
		configured = append(configured, st.Name)
	}
	if len(names) == 0 {
		names = configured
	}
	var asked []string
	for _, n := range names {
		if !slices.Contains(configured, n) {
			return nil, fmt.Errorf("%w %q (configured: %s)", rules.ErrUnknownFeed, n, strings.Join(configured, ", "))
		}
		if !slices.Contains(asked, n) {
			asked = append(asked, n)
		}
	}
	out := make([]rules.Outcome, len(asked))
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for i, n := range asked {
			wg.Go(func() { out[i] = d.refreshOne(fs.mgr, n) })
		}
		wg.Wait()
	}()
	select {
	case <-done:
		return out, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// refreshOne runs one round of feed name on request, or answers the last
// one (see RefreshFeeds).
func (d *Daemon) refreshOne(mgr *rules.Manager, name string) rules.Outcome {
	r := &d.refresh
	r.mu.Lock()
	if o, ok := r.last[name]; ok && time.Since(o.At) < refreshGap {
		r.mu.Unlock()
		o.Reused = true
		return o
	}
	if wait, ok := r.flight[name]; ok {
		r.mu.Unlock()
		<-wait
		r.mu.Lock()
		o := r.last[name]
		r.mu.Unlock()
		o.Reused = true
		return o
	}
	wait := make(chan struct{})
	r.flight[name] = wait
	r.mu.Unlock()

	o, _ := mgr.Refresh(d.runContext(), name, func(up rules.Update) error { return d.onFeedUpdate(mgr, up) })
	o.At = time.Now()
	// The outcome goes back to the admin who asked; the feed manager
	// logged it.
	d.log.Debug("feed refreshed on request", "feed", name, "result", o.Result, "serial", o.Serial)
	r.mu.Lock()
	r.last[name] = o
	delete(r.flight, name)
	r.mu.Unlock()
	close(wait)
	return o
}

// runContext is the context of Run, which ends when the daemon stops;
// before Run, one that never ends.
func (d *Daemon) runContext() context.Context {
	if ctx := d.runCtx.Load(); ctx != nil {
		return *ctx
	}
	return context.Background()
}
