package daemon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/internal/worker"
)

// WorkerOptions say how the enforcer starts its proxy workers
// (enforcement.privsep).
type WorkerOptions struct {
	// Exe is the gatehouse binary; empty means /proc/self/exe.
	Exe string
	// LogFormat and LogLevel are the workers' (text or json; debug … error).
	LogFormat, LogLevel string
	// Stderr receives the workers' log; nil means the enforcer's own
	// standard error. Their access log is relayed to Env.AccessLog.
	Stderr io.Writer
	// Env is the workers' environment (nil: empty).
	Env []string
}

// systemReadOnly are the files a worker reads besides the policy's: name
// resolution for backends, the system roots for backends without a
// backend_ca, time zones. Those missing are left out.
var systemReadOnly = []string{"/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf",
	"/etc/services", "/etc/ssl/certs", "/etc/pki/tls/certs", "/usr/share/ca-certificates", "/etc/localtime", "/usr/share/zoneinfo"}

// WorkerUser resolves enforcement.worker_user to its uid and primary gid.
// Run and check both call it.
func WorkerUser(cfg *config.Config) (uid, gid int, err error) {
	name := cfg.Enforcement.WorkerUser
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("enforcement.worker_user %q: %w (the package creates the user gatehouse; or set enforcement.privsep: false for development)", name, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("enforcement.worker_user %q: %w", name, err)
	}
	if uid == 0 || gid == 0 {
		return 0, 0, fmt.Errorf("enforcement.worker_user %q: is root (uid %d gid %d); the workers need a user of their own", name, uid, gid)
	}
	return uid, gid, nil
}

// privsepOn says whether this configuration runs proxy workers: the
// gateway and connector roles keep their proxies in the enforcer (their
// tunnels are wired into it).
func privsepOn(cfg *config.Config) bool {
	return cfg.Enforcement.Privsep && cfg.Role() == config.RoleAppliance
}

// buildWorkers makes the worker pool that replaces the in-process
// certificates and proxy under enforcement.privsep.
func buildWorkers(env *Env) (*layer, *worker.Pool, error) {
	cfg, p := env.Config, env.Policy
	uid, gid, err := WorkerUser(cfg)
	if err != nil {
		return nil, nil, err
	}
	// The certificates, keys, CAs and CRLs are not here: the pool reads
	// them and hands their content over; the workers cannot open them.
	var ro []string
	for _, f := range systemReadOnly {
		if _, err := os.Stat(f); err == nil {
			ro = append(ro, f)
		}
	}
	slices.Sort(ro)
	ro = slices.Compact(ro)
	tickets := filepath.Join(p.StateDir, "tls-tickets")
	if err := ticketDir(tickets, env.Logger); err != nil {
		return nil, nil, err
	}
	o := env.Worker
	if o.Exe == "" {
		o.Exe = "/proc/self/exe"
	}
	access := env.AccessLog
	if access == nil {
		access = slog.New(slog.DiscardHandler)
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	n := cfg.Enforcement.WorkerCount(runtime.NumCPU())
	pool, err := worker.NewPool(worker.PoolConfig{Exe: o.Exe, Args: []string{"worker"}, Env: o.Env, Workers: n, UID: uid, GID: gid,
		ReadOnly: ro, TicketDir: tickets, LogFormat: o.LogFormat, LogLevel: o.LogLevel, Logger: env.Logger,
		Stdout: worker.NewAccessRelay(access, env.Logger), Stderr: o.Stderr})
	if err != nil {
		return nil, nil, err
	}
	env.Logger.Info("privilege separation: the proxies run in worker processes without capabilities",
		"component", "workers", "workers", n, "user", cfg.Enforcement.WorkerUser, "uid", uid, "gid", gid)
	return &layer{name: "proxy", rangeBlind: true, refusals: pool.Refusals, apply: pool.Apply, close: pool.Close, shutdown: pool.Shutdown, sessions: pool}, pool, nil
}

// ticketDir makes dir, the workers' session-ticket directory, exist as
// root's with mode 0707: the workers (another user, "others" here) create,
// replace and sync their key files there (syncing opens the directory for
// reading). No chown: the unit grants no CAP_CHOWN. Its parent, state_dir,
// is root's and 0700 under the unit, so that only root and the workers,
// through the descriptor the pool passes them, reach dir; state_dir is
// left as it is (an admin socket in it may be meant for other users), a
// state_dir others can enter is warned about, and a worker refuses a key
// file it does not own (certs), so nothing planted there is ever used.
func ticketDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	parent := filepath.Dir(dir)
	fi, err := os.Stat(parent)
	if err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	if fi.Mode().Perm()&0o001 != 0 {
		log.Warn("state_dir can be entered by every user: they can reach the workers' ticket directory (keys they plant there are refused, but they can remove the workers'); make it 0700 or 0710",
			"component", "workers", "state_dir", parent, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	if err := os.Chmod(dir, 0o707); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	return nil
}

// pool is the worker pool, nil without privsep.
func (d *Daemon) pool() *worker.Pool {
	for _, c := range d.components {
		if l, ok := c.(*layer); ok && l.pool != nil {
			return l.pool
		}
	}
	return nil
}

// gatherer is the daemon's registry and, under privsep, the workers'
// registries merged (worker.Pool.Gather): one set of series, named as
// without privsep.
func (d *Daemon) gatherer() prometheus.Gatherer {
	if p := d.pool(); p != nil {
		return prometheus.Gatherers{d.reg, p}
	}
	return d.reg
}

// PrivsepStatus is the privilege split as status shows it.
type PrivsepStatus struct {
	On      bool                  `json:"on"`
	User    string                `json:"user,omitempty"`
	Workers []worker.WorkerStatus `json:"workers,omitempty"`
}

func (d *Daemon) privsepStatus() *PrivsepStatus {
	p := d.pool()
	if p == nil {
		return &PrivsepStatus{}
	}
	return &PrivsepStatus{On: true, User: d.cfg.Load().Enforcement.WorkerUser, Workers: p.Status()}
}
