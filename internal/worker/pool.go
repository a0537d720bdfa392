package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// PoolConfig configures the enforcer's side.
type PoolConfig struct {
	// Exe and Args start one worker (/proc/self/exe worker).
	Exe  string
	Args []string
	// Env is the workers' whole environment (nil: empty).
	Env []string
	// Workers is how many worker processes run (at least 1).
	Workers int
	// UID and GID are the workers' user and group (never 0).
	UID, GID int
	// ReadOnly and ReadWrite are what Landlock leaves the workers. The
	// certificate material the policy names is not among them: the pool
	// reads it and hands it over (MsgFiles).
	ReadOnly, ReadWrite []string
	// TicketDir is the directory the workers keep their session-ticket
	// keys in. The pool opens it and passes it (TicketFD): the workers
	// reach it through /proc/self/fd, without search permission on the
	// directories above it, and Landlock lets them write there only.
	TicketDir           string
	LogFormat, LogLevel string
	Logger              *slog.Logger
	// Stdout (the access log) and Stderr (the log) of the workers.
	Stdout, Stderr io.Writer
	// Timeout bounds each answer a worker owes; zero means 30 s.
	Timeout time.Duration
	// Poll is how often the pool looks at the material's files for
	// changes to hand over; zero means 1 s.
	Poll time.Duration
}

// Restart backoff of a dead worker: doubled per quick death, capped.
const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 10 * time.Second
	// A worker that lived this long resets the backoff.
	backoffReset = 30 * time.Second
)

// Pool is the enforcer's side: the listening sockets (one SO_REUSEPORT
// socket per listener and worker, bound here, with every privilege the
// ports need), the worker processes, and the policy they serve.
type Pool struct {
	cfg PoolConfig
	log *slog.Logger

	mu     sync.Mutex // serialises Apply, Shutdown, Close and restarts' first policy
	slots  []*slot
	policy json.RawMessage // the snapshot in force, for restarted workers
	gen    uint64
	// material is the content of every file the policy in force names,
	// as last read and handed to the workers.
	material map[string]certs.File
	closed   bool
	// stopping: Shutdown began; sockets closed, no restart, no Apply.
	stopping bool
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	metrics  *poolMetrics
}

// slot is one worker position: its sockets and its current process.
type slot struct {
	idx      int
	socks    map[string]*os.File // listen address → the enforcer's copy
	proc     *proc               // nil while (re)starting
	restarts int
}

// NewPool checks cfg; workers start at the first Apply.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("workers: %d, want at least 1", cfg.Workers)
	}
	if cfg.UID <= 0 || cfg.GID <= 0 {
		return nil, fmt.Errorf("worker user: uid %d gid %d: a worker never runs as root", cfg.UID, cfg.GID)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Stderr == nil {
		cfg.Stderr = io.Discard
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{cfg: cfg, log: cfg.Logger.With("component", "workers"), ctx: ctx, cancel: cancel, metrics: newPoolMetrics()}
	for i := range cfg.Workers {
		p.slots = append(p.slots, &slot{idx: i, socks: map[string]*os.File{}})
	}
	p.wg.Add(1)
	go p.watchMaterial()
	return p, nil
}

// Apply hands p to every worker, with the sockets of listen addresses it
// has not had yet: all workers take it, or the ones that did are given the
// previous snapshot back and the error says which refused. Workers are
// started at the first Apply. The files p names are read here, as root,
// and handed to the workers with it: they read no certificate or key
// themselves.
func (pl *Pool) Apply(p *policy.Policy) error {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed || pl.stopping {
		return errors.New("workers: shutting down")
	}
	mat, err := readMaterial(Files(p))
	if err != nil {
		return err
	}
	snap := *p
	snap.Admitted = policy.Admitted{} // the proxies never look at the ranges
	body, err := json.Marshal(&snap)
	if err != nil {
		return fmt.Errorf("encode policy: %w", err)
	}
	addrs := map[string]bool{}
	for _, l := range p.Listeners {
		addrs[l.ListenAddress()] = true
	}
	// Bind first: nothing is sent unless every socket is there.
	var bound []func()
	for _, s := range pl.slots {
		for a := range addrs {
			if _, ok := s.socks[a]; ok {
				continue
			}
			f, err := bindReusePort(a)
			if err != nil {
				for _, undo := range bound {
					undo()
				}
				return fmt.Errorf("listen %s: %w", a, err)
			}
			s.socks[a] = f
			bound = append(bound, func() { delete(s.socks, a); f.Close() })
		}
	}
	var done []*slot
	for _, s := range pl.slots {
		if s.proc == nil && pl.gen == 0 {
			pr, err := pl.spawn(s)
			if err != nil {
				err = fmt.Errorf("start worker %d: %w", s.idx, err)
				pl.giveBack(done, bound)
				return err
			}
			s.proc = pr
			pl.supervise(s, pr)
		}
		if s.proc == nil {
			continue // restarting: it gets the snapshot when it is up
		}
		err := pl.sendMaterial(s.proc, mat)
		if err == nil {
			err = pl.sendPolicy(s, body)
		}
		if err != nil {
			pl.giveBack(done, bound)
			return fmt.Errorf("worker %d (pid %d) refused generation %d: %w", s.idx, s.proc.pid, p.Generation, err)
		}
		done = append(done, s)
	}
	pl.policy, pl.gen, pl.material = body, p.Generation, mat
	for _, s := range pl.slots {
		for a, f := range s.socks {
			if !addrs[a] {
				f.Close()
				delete(s.socks, a)
				if s.proc != nil {
					delete(s.proc.sent, a)
				}
			}
		}
	}
	return nil
}

// giveBack restores the previous snapshot on the workers that took the new
// one and closes the sockets bound for it.
func (pl *Pool) giveBack(done []*slot, bound []func()) {
	for _, s := range done {
		if pl.policy == nil {
			continue
		}
		err := pl.sendMaterial(s.proc, pl.material)
		if err == nil {
			err = pl.sendPolicy(s, pl.policy)
		}
		if err != nil {
			pl.log.Error("worker could not be given its previous policy back: restarting it", "worker", s.idx, "err", err)
			s.proc.kill()
		}
	}
	for _, undo := range bound {
		undo()
	}
}

// sendPolicy sends body and the sockets s's process has not had yet, and
// waits for the answer. pl.mu is held.
func (pl *Pool) sendPolicy(s *slot, body json.RawMessage) error {
	pr := s.proc
	var names []string
	var fds []int
	for a, f := range s.socks {
		if !pr.sent[a] {
			names = append(names, a)
			fds = append(fds, int(f.Fd()))
		}
	}
	f, err := pr.request(MsgPolicy, Policy{Policy: body, Sockets: names}, pl.cfg.Timeout, fds...)
	if err != nil {
		return err
	}
	for _, a := range names {
		pr.sent[a] = true
	}
	var r Result
	if err := decode(f, &r); err != nil {
		pr.broken(err)
		return err
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	return nil
}

// Files lists every file a policy makes the proxies read: certificates,
// keys, CAs, intermediates, CRLs and the fleet's session-ticket keys.
func Files(p *policy.Policy) []string {
	var out []string
	add := func(fs ...string) {
		for _, f := range fs {
			if f != "" {
				out = append(out, filepath.Clean(f))
			}
		}
	}
	add(p.TLS.TicketKeys)
	for _, t := range p.Tenants {
		add(t.ClientCA, t.Intermediates, t.CRL)
	}
	for _, l := range p.Listeners {
		add(l.ServerCert, l.ServerKey)
		for _, ck := range l.ExtraCerts {
			add(ck.Cert, ck.Key)
		}
		for _, r := range l.Routes {
			add(r.BackendCA, r.BackendCert, r.BackendKey)
		}
	}
	return out
}

// bindReusePort binds a TCP listening socket with SO_REUSEPORT, so that
// one socket per worker shares the address and the kernel spreads the
// connections; it returns the socket as a file to pass on.
func bindReusePort(addr string) (*os.File, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	return ln.(*net.TCPListener).File()
}
