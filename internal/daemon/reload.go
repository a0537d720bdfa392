package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/internal/admin"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// Reload rebuilds the whole configuration and policy and swaps them in. On
// any error the generation in force stays, and the error says why.
func (d *Daemon) Reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, fs, sets, p, err := d.prepareReload()
	var pl plan
	var access *admin.Rules
	if err == nil {
		access, err = admin.CompileConfig(cfg, uint32(os.Geteuid()))
	}
	if err == nil {
		err = d.refuseWhileHeldAsIs(p)
	}
	if err == nil {
		pl, err = d.plan(cfg, p)
	}
	if err == nil {
		err = d.apply(pl, d.current.Load())
	}
	if err != nil {
		d.m.reloads.WithLabelValues("error").Inc()
		if !errors.Is(err, errSplit) {
			d.log.Error("reload refused; previous configuration stays in force", "generation", d.current.Load().Generation, "err", err)
		}
		return err
	}
	d.cfg.Store(cfg)
	d.access.Store(access)
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
	if old := d.feeds.Load(); !old.sameConfig(cfgs, guards) {
		if fs, err = d.newFeedState(cfg, old.mgr); err != nil {
			return nil, nil, nil, nil, err
		}
		if err = keepsFeeds(old, fs); err != nil {
			return nil, nil, nil, nil, err
		}
		sets = fs.current()
	}
	p, err = d.build(cfg, sets)
	return cfg, fs, sets, p, err
}

// keepsFeeds refuses a new feed manager that lost the release in force of
// a feed still configured: a rotated minisign key before the mirror is
// signed with it, a tighter min_prefix or another selection can make the
// stored release fail verification, and the reload would then drop that
// feed's ranges from every layer. Say which feed and why instead.
func keepsFeeds(old, next *feedState) error {
	if old.mgr == nil || next.mgr == nil {
		return nil
	}
	before, after := old.mgr.States(), next.mgr.States()
	var errs []error
	for _, a := range after {
		i := slices.IndexFunc(before, func(b rules.FeedState) bool { return b.Name == a.Name })
		if i < 0 || !before[i].Verified || a.Verified {
			continue
		}
		errs = append(errs, fmt.Errorf("feed %s: %s; the reload would drop its ranges: publish a release the new keys, "+
			"selection and guards accept first, or list the new minisign key beside the old one", a.Name, a.Problem))
	}
	return errors.Join(errs...)
}

// needsRestart refuses a reload that changes what is wired at start: where
// XDP is attached and pinned, whether nftables is used, where state,
// metrics and the admin socket live, the gateway or connector role, BGP
// and the fleet's block sharing. Those keys take a restart, which the kernel layers survive.
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
	// The worker pool is built at start: its size and user stay.
	check("enforcement.privsep", old.Enforcement.Privsep, next.Enforcement.Privsep)
	check("enforcement.workers", old.Enforcement.Workers, next.Enforcement.Workers)
	check("enforcement.worker_user", old.Enforcement.WorkerUser, next.Enforcement.WorkerUser)
	check("access.audit_log", old.Access.AuditLog, next.Access.AuditLog)
	check("access.https", old.Access.HTTPS, next.Access.HTTPS)
	// The socket's mode follows the grants at start.
	check("access.grants (whether a non-root user or a group is granted)", old.Access.UnixGrantsNonRoot(), next.Access.UnixGrantsNonRoot())
	// The role and its tunnels are wired at start; the files they name
	// (CAs, CRLs, certificates) are watched and reloaded on their own.
	if !reflect.DeepEqual(old.Gateway, next.Gateway) {
		changed = append(changed, "gateway")
	}
	if !reflect.DeepEqual(old.Connector, next.Connector) {
		changed = append(changed, "connector")
	}
	if !reflect.DeepEqual(old.BGP, next.BGP) {
		changed = append(changed, "bgp")
	}
	if !reflect.DeepEqual(old.Fleet, next.Fleet) {
		changed = append(changed, "fleet")
	}
	if len(changed) > 0 {
		return fmt.Errorf("%w: %s", ErrNeedsRestart, strings.Join(changed, ", "))
	}
	return nil
}
