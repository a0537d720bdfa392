package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Reload rebuilds the whole configuration and policy and swaps them in. On
// any error the generation in force stays, and the error says why.
func (d *Daemon) Reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, fs, sets, p, err := d.prepareReload()
	if err == nil {
		err = d.apply(p, d.current.Load())
	}
	if err != nil {
		d.m.reloads.WithLabelValues("error").Inc()
		if !errors.Is(err, errSplit) {
			d.log.Error("reload refused; previous configuration stays in force", "generation", d.current.Load().Generation, "err", err)
		}
		return err
	}
	d.cfg.Store(cfg)
	if fs != nil {
		d.useFeeds(fs, sets)
		d.restartFeeds()
	}
	d.m.reloads.WithLabelValues("ok").Inc()
	d.log.Info("configuration reloaded", "generation", p.Generation,
		"admitted_v4", len(p.Admitted.V4), "admitted_v6", len(p.Admitted.V6))
	return nil
}

// prepareReload reads the configuration and builds the generation a reload
// would apply. A changed feeds or rules section gets a new feed manager
// (returned, not yet in force) whose last-known-good sets are used; sets are
// the feed sets the generation is built from.
func (d *Daemon) prepareReload() (cfg *config.Config, fs *feedState, sets map[string][]netip.Prefix, p *policy.Policy, err error) {
	if cfg, err = config.Load(d.opts.ConfigPath, d.opts.LookupEnv); err != nil {
		return nil, nil, nil, nil, err
	}
	if err = needsRestart(d.cfg.Load(), cfg); err != nil {
		return nil, nil, nil, nil, err
	}
	cfgs, guards, err := FeedConfigs(cfg)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	sets = d.feedSets
	if !d.feeds.Load().sameConfig(cfgs, guards) {
		if fs, err = d.newFeedState(cfg); err != nil {
			return nil, nil, nil, nil, err
		}
		sets = fs.current()
	}
	p, err = d.build(cfg, sets)
	return cfg, fs, sets, p, err
}

// needsRestart refuses a reload that changes what is wired at start: where
// XDP is attached and pinned, whether nftables is used, where state and
// metrics live. Those keys take a restart, which the kernel layers survive.
func needsRestart(old, next *config.Config) error {
	var changed []string
	check := func(key string, a, b any) {
		if a != b {
			changed = append(changed, fmt.Sprintf("%s (%v → %v)", key, a, b))
		}
	}
	check("interface", old.Interface, next.Interface)
	check("enforcement.xdp", old.Enforcement.XDP, next.Enforcement.XDP)
	check("enforcement.pin_dir", old.Enforcement.PinDir, next.Enforcement.PinDir)
	check("enforcement.nftables", old.Enforcement.NFTables, next.Enforcement.NFTables)
	check("state_dir", old.StateDir, next.StateDir)
	check("metrics.listen", old.Metrics.Listen, next.Metrics.Listen)
	check("admin_socket", old.AdminSocket, next.AdminSocket)
	if len(changed) > 0 {
		return fmt.Errorf("%w: %s", ErrNeedsRestart, strings.Join(changed, ", "))
	}
	return nil
}
