package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/gatehouse-dmz/gatehouse/announce"
	"github.com/gatehouse-dmz/gatehouse/internal/admin"
	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/rules"
)

// ErrNeedsRestart is returned by Reload when a changed key can only take
// effect at start.
var ErrNeedsRestart = errors.New("changed keys take effect only on restart (systemctl restart gatehouse); reload refused")

// ErrHeld is returned by Reload for a change the kernel layers cannot take
// while they keep a previous run's generation as it is (see holdState).
var ErrHeld = errors.New("reload refused")

// ErrAdminSocketInUse means another daemon answers on the admin socket.
var ErrAdminSocketInUse = errors.New("another gatehouse answers on it: stop it first, or give this one its own admin_socket")

// Component is one part of the daemon that enforces a policy generation.
// Apply must be atomic: on error, the previous generation stays in force.
// The daemon says, once, whether a generation took: Apply logs what it did
// at debug only, and its error says what failed inside the component,
// naming neither the component nor the generation, which the daemon adds
// ("apply generation 7 to xdp: encode: …").
type Component interface {
	Name() string
	Apply(p *policy.Policy) error
	Close() error
}

// Runner is a component with a background loop (reconcile, file watch).
// Run returns nil when ctx is cancelled.
type Runner interface {
	Run(ctx context.Context) error
}

// RangeBlind is a component whose state does not depend on the admitted
// ranges (certificates, proxies). A feed update changes nothing else, so it
// is not applied to them: a feed refresh does not rebuild listeners, their
// backend keep-alive pools and health checks. A reload applies to every
// component.
type RangeBlind interface {
	RangeBlind() bool
}

// Holder is a kernel layer that can tell, before its first Apply, whether
// it still enforces the admitted ranges a previous run left (a pinned XDP
// filter, table inet gatehouse). See holdPrevious.
type Holder interface {
	HoldsPrevious() (bool, error)
}

// Health is a component that can find itself unfit to enforce what it was
// given (an XDP filter someone detached and that could not be put back).
// NotReady returns why, or "".
type Health interface {
	NotReady() string
}

// Warner is a component with standing warnings for status (a filter that
// will not outlive the daemon).
type Warner interface {
	Warnings() []string
}

// Drainer is a component that lets open sessions finish on shutdown.
type Drainer interface {
	Shutdown(ctx context.Context) error
}

// Builder creates the daemon's components for a first configuration. It is
// called once; later generations go through Apply.
type Builder func(env *Env) ([]Component, error)

// Env is what a Builder gets: the first configuration and compiled policy,
// a logger, and the registry to put collectors in.
type Env struct {
	Config   *config.Config
	Policy   *policy.Policy
	Logger   *slog.Logger
	Registry *prometheus.Registry
	// AccessLog receives one JSON line per request or session; nil discards.
	AccessLog *slog.Logger
	// AllowPrivateBPFFS accepts a pin directory private to the daemon's
	// mount namespace (see CheckPinDir).
	AllowPrivateBPFFS bool
	// Worker says how proxy workers start (enforcement.privsep).
	Worker WorkerOptions
}

// Options configure a Daemon.
type Options struct {
	ConfigPath string
	Logger     *slog.Logger
	// LookupEnv reads GATEHOUSE_… overrides; nil means the process environment.
	LookupEnv func(string) (string, bool)
	// Build creates the components; nil means the real ones (BuildComponents).
	Build Builder
	// AccessLog receives the proxies' access log; nil discards it.
	AccessLog *slog.Logger
	// NotifySocket is systemd's NOTIFY_SOCKET; WatchdogUSec and
	// WatchdogPID are WATCHDOG_USEC and WATCHDOG_PID. Empty: no systemd.
	NotifySocket, WatchdogUSec, WatchdogPID string
	// Version is reported by status.
	Version string
	// Signals, when true, makes Run reload on SIGHUP.
	Signals bool
	// AllowPrivateBPFFS: see Env.
	AllowPrivateBPFFS bool
	// Worker: see Env.
	Worker WorkerOptions
}

// Daemon is the running gatehouse: one policy generation in force at a time.
type Daemon struct {
	opts       Options
	log        *slog.Logger
	reg        *prometheus.Registry
	m          *metrics
	components []Component

	mu      sync.Mutex // serialises every change of generation
	current atomic.Pointer[policy.Policy]
	// feeds and feedSets (each feed's set in force) change under mu; feeds
	// is read without it by status and readiness.
	feeds       atomic.Pointer[feedState]
	feedSets    map[string][]netip.Prefix
	feedRestart chan struct{}
	cfg         atomic.Pointer[config.Config]
	running     atomic.Bool // the first generation is in force, and not stopping
	// stopping is set at SIGTERM, before the withdrawal: from then on the
	// node is not ready, so a VRRP peer tracking readiness takes the VIP
	// while this node still serves for bgp.drain.withdraw_wait.
	stopping atomic.Bool
	split    atomic.Bool // see errSplit
	// hold says which kernel layers keep a previous run's admitted ranges
	// (see holdPrevious); it changes under mu.
	hold atomic.Pointer[holdState]
	// inForce is the generation each component enforces, by name (absent:
	// nothing applied by this run); it changes under mu.
	inForce map[string]*policy.Policy
	refresh refresher                       // feed refreshes on request
	runCtx  atomic.Pointer[context.Context] // Run's, for work that outlives a request
	gen     uint64
	started time.Time
	bgp     *announce.Speaker // nil: bgp off
	// The admin API's grants (swapped by reload), audit log (open while
	// Run runs) and the access log's recent lines.
	access atomic.Pointer[admin.Rules]
	audit  atomic.Pointer[admin.Audit]
	ring   *admin.Ring
	td     teardownState // see POST /teardown
}

// New loads the configuration and compiles the first policy. It starts
// nothing: Run does.
func New(opts Options) (*Daemon, error) {
	if opts.Logger == nil {
		return nil, errors.New("daemon: a logger is required")
	}
	if opts.Build == nil {
		opts.Build = BuildComponents
	}
	d := &Daemon{opts: opts, log: opts.Logger.With("component", "daemon"), reg: prometheus.NewRegistry(), feedRestart: make(chan struct{}, 1),
		inForce: map[string]*policy.Policy{}, refresh: refresher{last: map[string]rules.Outcome{}, flight: map[string]chan struct{}{}}}
	d.m = newMetrics(d.reg)
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	cfg, err := config.Load(opts.ConfigPath, opts.LookupEnv)
	if err != nil {
		return nil, err
	}
	if err := CheckStateDir(cfg.StateDir); err != nil {
		return nil, err
	}
	fs, err := d.newFeedState(cfg, nil)
	if err != nil {
		return nil, err
	}
	sets := fs.current()
	p, err := d.build(cfg, sets)
	if err != nil {
		return nil, err
	}
	d.useFeeds(fs, sets)
	d.cfg.Store(cfg)
	rules, err := admin.CompileConfig(cfg, uint32(os.Geteuid()))
	if err != nil {
		return nil, err
	}
	d.access.Store(rules)
	// The access log is teed into memory for the admin API's tail.
	d.ring = admin.NewRing(accessRingLines)
	access := slog.New(d.ring.Tee(slog.DiscardHandler))
	if opts.AccessLog != nil {
		access = slog.New(d.ring.Tee(opts.AccessLog.Handler()))
	}
	comps, err := opts.Build(&Env{Config: cfg, Policy: p, Logger: opts.Logger, Registry: d.reg, AccessLog: access,
		AllowPrivateBPFFS: opts.AllowPrivateBPFFS, Worker: opts.Worker})
	if err != nil {
		return nil, fmt.Errorf("build components: %w", err)
	}
	d.components = comps
	d.current.Store(p)
	return d, nil
}

// Registry is the daemon's own Prometheus registry.
func (d *Daemon) Registry() *prometheus.Registry { return d.reg }

// Gatherer is what the metrics endpoint serves: the registry and, under
// enforcement.privsep, the workers' series merged into it.
func (d *Daemon) Gatherer() prometheus.Gatherer { return d.gatherer() }

// Policy is the generation in force (nil before the first Apply). Whether
// the daemon is ready is another matter: see NotReady.
func (d *Daemon) Policy() *policy.Policy {
	if !d.running.Load() {
		return nil
	}
	return d.current.Load()
}

// build compiles a configuration and the feeds' sets into a complete,
// validated policy generation: the admitted set is static_ranges united with
// every configured feed's set.
func (d *Daemon) build(cfg *config.Config, feedSets map[string][]netip.Prefix) (*policy.Policy, error) {
	p := cfg.Policy()
	sources := map[string][]netip.Prefix{staticSource: cfg.StaticPrefixes()}
	for _, f := range cfg.Feeds {
		sources[f.Name] = feedSets[f.Name] // nil until a release verifies: fail closed
	}
	adm, err := rules.Union(sources)
	if err != nil {
		return nil, fmt.Errorf("admitted ranges: %w", err)
	}
	p.Admitted = adm
	d.gen++
	p.Generation = d.gen
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("compiled policy: %w", err)
	}
	return p, nil
}

// Run applies the first policy, serves metrics, runs every component's loop
// and returns when ctx is cancelled (nil) or something fails. On the way out
// it drains the proxies for shutdown_grace and closes every component; the
// kernel layers stay in force.
func (d *Daemon) Run(ctx context.Context) (err error) {
	defer func() { err = d.finishTeardown(errors.Join(err, d.close())) }()
	ctx = d.teardownContext(ctx) // POST /teardown cancels it
	cfg := d.cfg.Load()
	ln, err := net.Listen("tcp", cfg.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 5 * time.Second}
	// The admin API is audited or not served.
	if err := d.openAudit(cfg); err != nil {
		ln.Close()
		return err
	}
	defer d.closeAudit()
	adminLn, err := d.listenAdminHTTPS(cfg.Access.HTTPS)
	if err != nil {
		ln.Close()
		return err
	}

	d.holdPrevious(d.current.Load())
	d.m.observeHold(d.hold.Load(), d.kernelLayers())
	first, err := d.plan(cfg, d.current.Load())
	if err == nil {
		err = d.apply(first, nil)
	}
	if err == nil {
		err = d.startBGP(ctx, cfg.BGP)
	}
	if err != nil {
		ln.Close()
		if adminLn != nil {
			adminLn.Close()
		}
		return err
	}
	d.running.Store(true)
	d.started = time.Now()
	p := d.current.Load()
	d.log.Info("policy in force", "generation", p.Generation, "listeners", len(p.Listeners),
		"tenants", len(p.Tenants), "admitted_v4", len(p.Admitted.V4), "admitted_v6", len(p.Admitted.V6))
	// systemd hears READY once the first generation is in force, whatever
	// the feeds: the proxies serve and the kernel layers enforce. /readyz
	// and STATUS say what is still missing.
	sd := newNotifier(d.opts.NotifySocket)
	status := "policy in force"
	if why := d.NotReady(); len(why) > 0 {
		status = "not ready: " + strings.Join(why, "; ")
	}
	if err := sd.notify("READY=1\nSTATUS=" + status); err != nil {
		d.log.Warn("systemd notify failed", "err", err)
	}

	g, gctx := errgroup.WithContext(ctx)
	d.runCtx.Store(&gctx)
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics server: %w", err)
		}
		return nil
	})
	for _, c := range d.components {
		if r, ok := c.(Runner); ok {
			g.Go(func() error {
				if err := r.Run(gctx); err != nil && !errors.Is(err, context.Canceled) {
					return fmt.Errorf("%s: %w", c.Name(), err)
				}
				return nil
			})
		}
	}
	g.Go(func() error { return d.runFeeds(gctx) })
	g.Go(func() error { return d.runBGP(gctx) })
	if sock := cfg.AdminSocket; sock != "" {
		g.Go(func() error { return d.serveAdmin(gctx, sock, cfg.Access.UnixGrantsNonRoot()) })
	}
	if adminLn != nil {
		g.Go(func() error { return d.serveAdminHTTPS(gctx, adminLn) })
	}
	if every := watchdogInterval(d.opts.WatchdogUSec, d.opts.WatchdogPID, os.Getpid()); every > 0 {
		g.Go(func() error {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-t.C:
					_ = sd.notify("WATCHDOG=1")
				}
			}
		})
	}
	if d.opts.Signals {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		g.Go(func() error {
			defer signal.Stop(hup)
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-hup:
					d.log.Debug("SIGHUP: reloading", "config", d.opts.ConfigPath)
					_ = sd.notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
					_ = d.Reload() // logged and counted; the old state stays
					_ = sd.notify("READY=1")
				}
			}
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		_ = sd.notify("STOPPING=1")
		d.stopping.Store(true)
		// Withdraw first and keep serving while the routers move flows
		// away; only then stop being ready and drain.
		bgpErr := d.stopBGP()
		d.running.Store(false)
		grace := d.cfg.Load().ShutdownGrace
		d.log.Info("stopping: draining sessions", "grace", grace)
		dctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		errs := []error{bgpErr}
		for _, c := range d.components {
			if dr, ok := c.(Drainer); ok {
				if err := dr.Shutdown(dctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
					errs = append(errs, fmt.Errorf("drain %s: %w", c.Name(), err))
				}
			}
		}
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		defer scancel()
		errs = append(errs, srv.Shutdown(sctx))
		return errors.Join(errs...)
	})
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (d *Daemon) close() error {
	var errs []error
	if d.bgp != nil {
		errs = append(errs, d.bgp.Close())
	}
	for i := len(d.components) - 1; i >= 0; i-- {
		if err := d.components[i].Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", d.components[i].Name(), err))
		}
	}
	d.components = nil
	return errors.Join(errs...)
}

func (d *Daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.gatherer(), promhttp.HandlerOpts{Registry: d.reg, ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := d.NotReady(); len(why) > 0 {
			http.Error(w, "not ready: "+strings.Join(why, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ready: generation %d\n", d.current.Load().Generation)
	})
	return mux
}
