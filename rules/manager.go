package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Schedule defaults.
const (
	DefaultRefresh = 15 * time.Minute
	backoffBase    = 30 * time.Second
	acceptPoll     = 2 * time.Second
)

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	Logger   *slog.Logger
	StateDir string
	Feeds    []FeedConfig
	Guards   Guards
	// HTTPClient fetches https:// sources; nil builds one per feed with
	// timeouts (and the feed's CAFile as the only trusted CA). A feed with
	// a CAFile always gets its own client.
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Carry is the manager this one replaces (a reload): the release in
	// force of each feed it had is verified again under this
	// configuration and kept, instead of being read back from the store,
	// which may not hold it yet. A release that no longer verifies is
	// not kept (States says why).
	Carry *Manager
}

// Update is a verified release of one feed, handed to the daemon to put in
// force.
type Update struct {
	Feed     string
	Serial   uint64
	Prefixes []netip.Prefix // aggregated
	// Accepted: the admin let this release through a guard with
	// `gatehouse feed accept` (it was held in quarantine).
	Accepted bool
}

// ApplyFunc puts an Update in force. It returns nil once a generation
// with it is in force on every layer (the release is then committed as
// last known good, and with it every release deferred before), ErrDeferred
// when it took the release but could not put it in force everywhere yet,
// or why it refused (a refusal with ReasonQuarantined holds the release
// in quarantine until `gatehouse feed accept`). Calls never overlap.
type ApplyFunc func(Update) error

// Manager keeps every configured feed current: it fetches, verifies and
// guards new releases, hands the accepted ones to the daemon and persists
// them as last known good once the daemon has applied them.
type Manager struct {
	log   *slog.Logger
	store *Store
	now   func() time.Time
	feeds []*feed

	applyMu sync.Mutex // one onUpdate at a time

	descSerial, descSuccess, descUpdates, descExpired, descPrevious, descRefresh *prometheus.Desc
}

// feed is one feed's state; mu guards the fields below it.
type feed struct {
	cfg     FeedConfig
	v       *Verifier
	fetch   *fetcher
	wake    chan struct{}
	cycleMu sync.Mutex // one fetch-verify-apply round at a time

	mu          sync.Mutex
	current     *Verified // in force
	previous    bool      // current is the release the last known good replaced (see loadLastKnownGood)
	floor       *Floor    // the highest release in force so far (see floor.go); nil: none known
	pending     *Verified // held in quarantine
	deferred    *Verified // taken by the daemon, not yet in force in the kernel (ErrDeferred)
	val         *validators
	lastSuccess time.Time
	problem     string                // why there is no release in force (or why it is the previous one)
	lastResult  string                // of the latest attempt: a result or a Reason
	lastErr     string                // of the latest attempt, when it failed
	fileVal     map[string]validators // cache validators of the files in force, see checkMirror
	unsettled   bool                  // the last mirror check found a mismatch, see checkMirror
	expired     bool
	failures    int
	updates     map[string]uint64
}

var _ prometheus.Collector = (*Manager)(nil)

// NewManager compiles every feed, opens the store in StateDir and loads
// each feed's last known good release, verified again (an expired one is
// kept, flagged expired). A stored release that no longer verifies is
// logged and ignored.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if cfg.Logger == nil {
		return nil, errors.New("feed manager: no logger")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	store, err := OpenStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		log:   cfg.Logger.With("component", "feeds"),
		store: store,
		now:   cfg.Now,
		descSerial: prometheus.NewDesc("gatehouse_feed_serial",
			"Serial of the feed release in force.", []string{"feed"}, nil),
		descSuccess: prometheus.NewDesc("gatehouse_feed_last_success_timestamp_seconds",
			"When the feed was last fetched and verified (applied or unchanged).", []string{"feed"}, nil),
		descUpdates: prometheus.NewDesc("gatehouse_feed_updates_total",
			"Feed update attempts by result: applied, unchanged, accepted, or the reason for refusal.", []string{"feed", "result"}, nil),
		descExpired: prometheus.NewDesc("gatehouse_feed_expired",
			"1 when the feed release in force has expired (it stays enforced).", []string{"feed"}, nil),
		descPrevious: prometheus.NewDesc("gatehouse_feed_previous_release",
			"1 when the feed release in force is the previous one: its last known good file was lost or unusable.", []string{"feed"}, nil),
		descRefresh: prometheus.NewDesc("gatehouse_feed_refresh_seconds",
			"The feed's configured refresh interval: nodes on the same feed agree on its serial within one.", []string{"feed"}, nil),
	}
	seen := map[string]bool{}
	for _, fc := range cfg.Feeds {
		if seen[fc.Name] {
			return nil, fmt.Errorf("feed %s: configured twice", fc.Name)
		}
		seen[fc.Name] = true
		v, err := NewVerifier(fc, cfg.Guards, cfg.Now)
		if err != nil {
			return nil, err
		}
		fe, err := newFetcher(fc.Source, fc.CAFile, cfg.HTTPClient)
		if err != nil {
			return nil, fmt.Errorf("feed %s: %w", fc.Name, err)
		}
		f := &feed{cfg: fc, v: v, fetch: fe, wake: make(chan struct{}, 1), updates: map[string]uint64{}}
		m.feeds = append(m.feeds, f)
		if !m.carry(f, cfg.Carry) {
			m.loadLastKnownGood(f)
		}
	}
	return m, nil
}

// Current returns the aggregated prefixes in force per feed (feeds without
// a verified release are absent).
func (m *Manager) Current() map[string][]netip.Prefix {
	out := map[string][]netip.Prefix{}
	for _, f := range m.feeds {
		f.mu.Lock()
		if f.current != nil {
			out[f.cfg.Name] = slices.Clone(f.current.Prefixes)
		}
		f.mu.Unlock()
	}
	return out
}

func (m *Manager) feed(name string) (*feed, error) {
	for _, f := range m.feeds {
		if f.cfg.Name == name {
			return f, nil
		}
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownFeed, name)
}

// Run keeps every feed current until ctx ends, then returns nil. onUpdate
// puts each verified release in force (see ApplyFunc); only a release it
// returns nil for is persisted as last known good.
func (m *Manager) Run(ctx context.Context, onUpdate ApplyFunc) error {
	var wg sync.WaitGroup
	for _, f := range m.feeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.loop(ctx, f, onUpdate)
		}()
	}
	wg.Wait()
	return nil
}

func (m *Manager) loop(ctx context.Context, f *feed, onUpdate ApplyFunc) {
	poll := time.NewTicker(acceptPoll)
	defer poll.Stop()
	for {
		// A mirror caught mid-publish is checked again at the next
		// refresh, not after the failure backoff: a cache that keeps the
		// manifest a little longer than the files is not a fault.
		err := m.Cycle(ctx, f.cfg.Name, onUpdate)
		ok := err == nil || ReasonOf(err) == ReasonMirrorUnsettled
		timer := time.NewTimer(m.nextDelay(f, ok))
	wait:
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
				break wait
			case <-f.wake:
				timer.Stop()
				break wait
			case <-poll.C:
				m.checkExpiry(f)
				if m.acceptPending(f, onUpdate) {
					timer.Stop()
					break wait
				}
			}
		}
	}
}

// nextDelay is the refresh interval with ±10 % jitter after success, and
// exponential backoff from 30 s up to the refresh interval after failures.
func (m *Manager) nextDelay(f *feed, ok bool) time.Duration {
	refresh := f.refresh()
	f.mu.Lock()
	if ok {
		f.failures = 0
	} else {
		f.failures++
	}
	n := f.failures
	f.mu.Unlock()
	d := refresh
	if n > 0 {
		d = backoffBase << min(n-1, 16)
		d = min(d, refresh)
	}
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

func (m *Manager) count(f *feed, result string) {
	f.mu.Lock()
	f.updates[result]++
	f.mu.Unlock()
}

func (m *Manager) checkExpiry(f *feed) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current == nil {
		return
	}
	exp := !m.now().Before(f.current.Manifest.Expires)
	if exp && !f.expired {
		m.log.Warn("feed release in force has expired; it stays enforced", "feed", f.cfg.Name,
			"serial", f.current.Manifest.Serial, "expired_at", f.current.Manifest.Expires)
	}
	f.expired = exp
}

// apply hands ver to the daemon and, once it is in force, commits it as
// last known good (keeping the release it replaces as the previous one)
// and raises the floor. A release the daemon defers is kept aside; one the
// daemon holds in quarantine is quarantined as the coverage guard would.
func (m *Manager) apply(f *feed, ver *Verified, result string, onUpdate ApplyFunc) error {
	log := m.log.With("feed", f.cfg.Name, "serial", ver.Manifest.Serial)
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	err := onUpdate(Update{Feed: f.cfg.Name, Serial: ver.Manifest.Serial, Prefixes: slices.Clone(ver.Prefixes), Accepted: result == ResultAccepted})
	switch {
	case errors.Is(err, ErrDeferred):
		f.mu.Lock()
		f.deferred = ver
		f.lastSuccess = m.now()
		f.updates[ResultDeferred]++
		f.mu.Unlock()
		log.Info("feed release verified; it waits for the kernel layers and is not committed yet", "result", result, "prefixes", len(ver.Prefixes),
			"why", err)
		return nil
	case ReasonOf(err) == ReasonQuarantined:
		m.quarantine(f, ver)
		m.count(f, string(ReasonQuarantined))
		log.Warn("feed update held in quarantine; run `gatehouse feed accept "+f.cfg.Name+"` to apply it", "reason", ReasonQuarantined, "err", err)
		return err
	case err != nil:
		m.count(f, string(ReasonApply))
		// A layer refused it: what the layers enforce is now staler than
		// the feed, an error an admin alerts on, as a refused reload is.
		log.Error("feed update not applied; last known good stays in force", "reason", ReasonApply, "err", err)
		return &Error{Reason: ReasonApply, Err: err}
	}
	err = m.commit(f, ver, result, log)
	// A generation in force everywhere holds every release the daemon
	// took before (it builds from all of them): those are in force now.
	for _, o := range m.feeds {
		o.mu.Lock()
		d := o.deferred
		o.mu.Unlock()
		if o != f && d != nil {
			_ = m.commit(o, d, ResultApplied, m.log.With("feed", o.cfg.Name, "serial", d.Manifest.Serial)) // logged and counted
		}
	}
	return err
}

// commit makes ver the release in force of f and persists it.
func (m *Manager) commit(f *feed, ver *Verified, result string, log *slog.Logger) error {
	f.mu.Lock()
	prev := f.current
	f.current, f.pending, f.deferred = ver, nil, nil
	f.previous, f.problem = false, ""
	f.fileVal, f.unsettled = nil, false
	f.expired = false
	f.lastSuccess = m.now()
	f.updates[result]++
	f.mu.Unlock()
	log.Info("feed update applied", "result", result, "prefixes", len(ver.Prefixes),
		"ipv4_addresses", ver.Coverage.V4, "entries", ver.Entries, "selected", ver.Selected)
	// The release it replaces is kept beside it, so that one damaged file
	// does not lose both (see loadLastKnownGood).
	if prev != nil && prev.Digest != ver.Digest {
		if err := m.store.SavePrevious(f.cfg.Name, prev.Manifest.Serial, prev.Bundle); err != nil {
			log.Warn("previous release not kept beside the last known good", "err", err)
		}
	}
	err := errors.Join(m.store.Commit(f.cfg.Name, ver), m.raiseFloor(f, ver))
	if err != nil {
		m.count(f, string(ReasonStore))
		log.Error("feed update applied but not persisted; a restart falls back to the previous release", "err", err)
		return &Error{Reason: ReasonStore, Err: err}
	}
	if err := m.store.ClearQuarantine(f.cfg.Name); err != nil {
		log.Warn("cannot clear quarantine", "err", err)
	}
	return nil
}

// refresh is the feed's refresh interval.
func (f *feed) refresh() time.Duration {
	if f.cfg.Refresh > 0 {
		return f.cfg.Refresh
	}
	return DefaultRefresh
}
