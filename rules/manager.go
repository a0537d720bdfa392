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
}

// Manager keeps every configured feed current: it fetches, verifies and
// guards new releases, hands the accepted ones to the daemon and persists
// them as last known good once the daemon has applied them.
type Manager struct {
	log   *slog.Logger
	store *Store
	now   func() time.Time
	feeds []*feed

	applyMu sync.Mutex // one onUpdate at a time

	descSerial, descSuccess, descUpdates, descExpired *prometheus.Desc
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
	pending     *Verified // held in quarantine
	val         *validators
	lastSuccess time.Time
	problem     string                // why there is no release in force (or why it is the previous one)
	lastResult  string                // of the latest attempt: a result or a Reason
	lastErr     string                // of the latest attempt, when it failed
	fileVal     map[string]validators // cache validators of the files in force, see checkMirror
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
		m.loadLastKnownGood(f)
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
// receives a feed's new aggregated prefixes and returns nil only once the
// daemon applied a policy with them; only then is the release persisted as
// last known good. Calls to onUpdate never overlap.
func (m *Manager) Run(ctx context.Context, onUpdate func(name string, prefixes []netip.Prefix) error) error {
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

func (m *Manager) loop(ctx context.Context, f *feed, onUpdate func(string, []netip.Prefix) error) {
	poll := time.NewTicker(acceptPoll)
	defer poll.Stop()
	for {
		ok := m.Cycle(ctx, f.cfg.Name, onUpdate) == nil
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
	refresh := f.cfg.Refresh
	if refresh <= 0 {
		refresh = DefaultRefresh
	}
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

// Cycle runs one fetch-verify-apply round for feed name: what Run does on
// every refresh. A refusal is logged once, counted, and returned; nil
// means applied or unchanged.
func (m *Manager) Cycle(ctx context.Context, name string, onUpdate func(string, []netip.Prefix) error) error {
	f, err := m.feed(name)
	if err != nil {
		return err
	}
	_, err = m.cycle(ctx, f, onUpdate)
	return err
}

// cycle is Cycle for one feed, and says what came of it. The rounds of one
// feed never overlap (the refresh loop and an admin's Refresh).
func (m *Manager) cycle(ctx context.Context, f *feed, onUpdate func(string, []netip.Prefix) error) (o Outcome, err error) {
	f.cycleMu.Lock()
	defer f.cycleMu.Unlock()
	defer m.checkExpiry(f)
	name := f.cfg.Name
	log := m.log.With("feed", name)
	result, ver, val, err := m.fetchAndVerify(ctx, f)
	defer func() {
		m.record(f, result, err)
		o = m.outcome(f, result, ver, err)
	}()
	if err != nil {
		r := ReasonOf(err)
		if r == "" {
			r = ReasonFetch
		}
		result = string(r)
		m.count(f, string(r))
		switch r {
		case ReasonSerialReuse:
			log.Error("feed update refused: serial reused with different content (ALERT: possible key compromise or publisher error)", "reason", r, "err", err)
		case ReasonMirrorMismatch:
			log.Error("feed mirror serves a file that differs from the signed release in force (corrupted or tampered mirror); the release in force stays", "reason", r, "err", err)
		case ReasonQuarantined:
			log.Warn("feed update held in quarantine; run `gatehouse feed accept "+name+"` to apply it", "reason", r, "serial", ver.Manifest.Serial, "err", err)
		default:
			log.Warn("feed update refused; last known good stays in force", "reason", r, "err", err)
		}
		return o, err
	}
	if result == ResultUnchanged {
		m.count(f, ResultUnchanged)
		log.Debug("feed unchanged")
		return o, nil
	}
	err = m.apply(f, ver, result, onUpdate)
	if r := ReasonOf(err); r != "" {
		result = string(r)
	}
	if err == nil || ReasonOf(err) == ReasonStore {
		// Remember the validators only once the release is in force, so
		// that a release the daemon failed to apply is fetched again.
		f.mu.Lock()
		f.val = val
		f.mu.Unlock()
	}
	return o, err
}

// record keeps the outcome of the latest attempt for status.
func (m *Manager) record(f *feed, result string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastResult, f.lastErr = result, ""
	if err != nil {
		f.lastErr = err.Error()
	}
}

// fetchAndVerify returns ResultUnchanged, or a release ready to apply
// (result ResultApplied or ResultAccepted) with the manifest's cache
// validators, or a refusal. A quarantined release is returned with its
// refusal.
func (m *Manager) fetchAndVerify(ctx context.Context, f *feed) (string, *Verified, *validators, error) {
	f.mu.Lock()
	var prior *Prior
	if f.current != nil {
		prior = &Prior{Serial: f.current.Manifest.Serial, Digest: f.current.Digest}
	}
	val := f.val
	f.mu.Unlock()

	raw, newVal, notModified, err := f.fetch.get(ctx, ManifestName, MaxManifestSize, val)
	if err != nil {
		return "", nil, nil, fetchErr(ManifestName, err)
	}
	if notModified {
		if err := m.checkMirror(ctx, f); err != nil {
			return "", nil, nil, err
		}
		m.markSuccess(f, val)
		return ResultUnchanged, nil, nil, nil
	}
	var sigs [][]byte
	for i := 1; i <= len(f.cfg.Keys) && i <= MaxSignatures; i++ {
		s, _, _, err := f.fetch.get(ctx, SignatureName(i), MaxSignatureSize, nil)
		if errors.Is(err, errNotFound) {
			continue
		}
		if err != nil {
			return "", nil, nil, fetchErr(SignatureName(i), err)
		}
		sigs = append(sigs, s)
	}
	man, _, err := f.v.VerifyManifest(raw, sigs, prior, VerifyOptions{})
	if errors.Is(err, ErrUnchanged) {
		if err := m.checkMirror(ctx, f); err != nil {
			return "", nil, nil, err
		}
		m.markSuccess(f, &newVal)
		return ResultUnchanged, nil, nil, nil
	}
	if err != nil {
		return "", nil, nil, err
	}
	b := Bundle{Manifest: raw, Signatures: sigs, Files: map[string][]byte{}}
	for _, mf := range man.Files {
		data, _, _, err := f.fetch.get(ctx, mf.Name, min(mf.Length, MaxFileSize), nil)
		if err != nil {
			if ReasonOf(err) == ReasonTooLarge {
				return "", nil, nil, &Error{Reason: ReasonHashMismatch, Err: fmt.Errorf("file %s: longer than the manifest's %d bytes", mf.Name, mf.Length)}
			}
			return "", nil, nil, fetchErr(mf.Name, err)
		}
		b.Files[mf.Name] = data
	}
	ver, err := f.v.VerifyPayload(man, b.Files)
	if err != nil {
		return "", nil, nil, err
	}
	ver.Bundle, ver.Digest = b, b.Digest()
	ver.Manifest = man

	result := ResultApplied
	f.mu.Lock()
	cur := f.current
	f.mu.Unlock()
	if cur != nil {
		if cerr := CheckCoverage(cur.Coverage, ver.Coverage, f.cfg.maxShrink(), f.cfg.maxGrow()); cerr != nil {
			accepted, ok, aerr := m.store.ReadAccept(f.cfg.Name)
			if aerr != nil {
				m.log.Warn("cannot read feed acceptance", "feed", f.cfg.Name, "err", aerr)
			}
			if !ok || accepted != ver.Digest {
				m.quarantine(f, ver)
				return "", ver, nil, cerr
			}
			result = ResultAccepted
		}
	}
	return result, ver, &newVal, nil
}

func fetchErr(name string, err error) error {
	if ReasonOf(err) != "" {
		return err
	}
	return &Error{Reason: ReasonFetch, Err: fmt.Errorf("fetch %s: %w", name, err)}
}

func (m *Manager) markSuccess(f *feed, val *validators) {
	f.mu.Lock()
	f.lastSuccess = m.now()
	if val != nil {
		f.val = val
	}
	f.mu.Unlock()
}

func (m *Manager) apply(f *feed, ver *Verified, result string, onUpdate func(string, []netip.Prefix) error) error {
	log := m.log.With("feed", f.cfg.Name, "serial", ver.Manifest.Serial)
	m.applyMu.Lock()
	err := onUpdate(f.cfg.Name, slices.Clone(ver.Prefixes))
	m.applyMu.Unlock()
	if err != nil {
		m.count(f, string(ReasonApply))
		log.Warn("feed update not applied; last known good stays in force", "reason", ReasonApply, "err", err)
		return &Error{Reason: ReasonApply, Err: err}
	}
	f.mu.Lock()
	prev := f.current
	f.current, f.pending = ver, nil
	f.problem = ""
	f.fileVal = nil
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
	if err := m.store.Commit(f.cfg.Name, ver); err != nil {
		m.count(f, string(ReasonStore))
		log.Error("feed update applied but not persisted; a restart falls back to the previous release", "err", err)
		return &Error{Reason: ReasonStore, Err: err}
	}
	if err := m.store.ClearQuarantine(f.cfg.Name); err != nil {
		log.Warn("cannot clear quarantine", "err", err)
	}
	return nil
}
