package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/sandbox"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy"
)

// ControlFD is the worker's control socket: the first of exec's ExtraFiles.
const ControlFD = 3

// TicketFD is the worker's session-ticket directory, opened by the
// enforcer: the second of exec's ExtraFiles, when PoolConfig.TicketDir is set.
const TicketFD = 4

// Main runs a worker: it reads the enforcer's hello on the control socket,
// confines itself (sandbox.Apply) before anything from the network is
// read, answers hello, and then serves the policies it is given on the
// sockets passed with them until the enforcer closes the control socket
// or asks it to drain. The access log goes to stdout, the log to stderr.
func Main(ctrl *os.File, stdout, stderr io.Writer) error {
	c, err := newConn(ctrl)
	if err != nil {
		return fmt.Errorf("worker: control socket: %w", err)
	}
	defer c.Close()
	f, fds, err := c.recv()
	closeFDs(fds)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	var h Hello
	if f.Type != MsgHello {
		return fmt.Errorf("worker: %w: %s before hello", ErrUnexpected, f.Type)
	}
	if err := decode(f, &h); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	if h.Version != Version {
		return fmt.Errorf("worker: %w: enforcer speaks %d, this worker %d", ErrVersion, h.Version, Version)
	}
	logger, err := newLogger(stderr, h.LogFormat, h.LogLevel)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	logger = logger.With("worker", h.Index)
	// The proxy counts its open descriptors in /proc/self/fd (this
	// process's own directory, resolved before the rules hold).
	ro := append(h.ReadOnly[:len(h.ReadOnly):len(h.ReadOnly)], "/proc/self/fd")
	st, err := sandbox.Apply(sandbox.Config{UID: h.UID, GID: h.GID, ReadOnly: ro, ReadWrite: h.ReadWrite})
	if err != nil {
		return fmt.Errorf("worker %d: %w", h.Index, err)
	}
	// Every certificate, key, CA and CRL comes from the enforcer (MsgFiles):
	// Landlock leaves this process no read access to them.
	files := certs.NewSnapshot()
	certs.SetFileSource(files)
	w := &child{c: c, log: logger, socks: map[string]net.Listener{}, reg: prometheus.NewRegistry(), files: files}
	w.reg.MustRegister(collectors.NewGoCollector())
	if w.cm, err = certs.New(certs.Config{Logger: logger, Files: files, TicketDir: h.TicketDir}); err != nil {
		return err
	}
	defer w.cm.Close()
	access := slog.New(slog.NewJSONHandler(stdout, nil)).With("log", "access")
	if w.px, err = proxy.New(proxy.Config{Logger: logger, TLS: w.cm, AccessLog: access, Listen: w.listen}); err != nil {
		return err
	}
	defer w.px.Close()
	w.reg.MustRegister(w.cm, w.px)
	w.cm.OnChange(func() {
		if n := w.px.Revalidate(); n > 0 {
			logger.Info("closed sessions whose certificate no longer checks out", "count", n)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.cm.Watch(ctx)
	logger.Info("worker confined", "pid", os.Getpid(), "uid", os.Getuid(), "gid", os.Getgid(),
		"landlock_abi", st.LandlockABI, "seccomp_syscalls", st.SeccompSyscalls)
	if startHooks != nil {
		startHooks(w)
	}
	if err := c.send(MsgHello, 0, Hello{Version: Version, PID: os.Getpid(), LandlockABI: st.LandlockABI, Seccomp: st.SeccompSyscalls}); err != nil {
		return err
	}
	return w.serve()
}

// startHooks is set only in binaries built for tests (testhooks.go).
var startHooks func(*child)

type child struct {
	c   *conn
	log *slog.Logger
	cm  *certs.Manager
	px  *proxy.Server
	reg *prometheus.Registry
	// files is the certificate material the enforcer handed over.
	files *certs.Snapshot

	mu    sync.Mutex
	socks map[string]net.Listener // passed, not yet taken by the proxy
	prev  *policy.Policy
}

// listen hands the proxy the socket the enforcer bound for addr.
func (w *child) listen(addr string) (net.Listener, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ln, ok := w.socks[addr]
	if !ok {
		return nil, fmt.Errorf("no socket from the enforcer for %s", addr)
	}
	delete(w.socks, addr)
	return ln, nil
}

// serve answers the enforcer until it closes the control socket (nil) or
// drains this worker.
func (w *child) serve() error {
	for {
		f, fds, err := w.c.recv()
		if err != nil {
			closeFDs(fds)
			if errors.Is(err, io.EOF) {
				w.log.Info("control socket closed by the enforcer: exiting")
				return nil
			}
			return err
		}
		var reply any
		typ := MsgResult
		switch f.Type {
		case MsgPolicy:
			reply = w.apply(f, fds)
		case MsgFiles:
			closeFDs(fds)
			var m Material
			if err := decode(f, &m); err != nil {
				reply = Result{Error: err.Error()}
			} else {
				w.files.Put(m.Files...)
				reply = Result{}
			}
		case MsgRevalidate:
			closeFDs(fds)
			reply = Result{Closed: w.px.Revalidate()}
		case MsgCut:
			closeFDs(fds)
			var cut Cut
			if err := decode(f, &cut); err != nil {
				reply = Result{Error: err.Error()}
			} else if cut.Drain {
				reply = Result{Closed: w.px.Drain(cut.Tenant, cut.Env, time.Duration(cut.GraceMS)*time.Millisecond)}
			} else {
				reply = Result{Closed: w.px.Kill(cut.Tenant, cut.Env)}
			}
		case MsgDrain:
			closeFDs(fds)
			var d Drain
			res := Result{}
			if err := decode(f, &d); err != nil {
				res.Error = err.Error()
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(d.GraceMS)*time.Millisecond)
				if err := w.px.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
					res.Error = err.Error()
				}
				cancel()
			}
			return w.c.send(MsgResult, f.Seq, res)
		case MsgStatus:
			closeFDs(fds)
			typ, reply = MsgStatus, w.status()
		case MsgMetrics:
			closeFDs(fds)
			m, err := w.metrics()
			if err != nil {
				return err
			}
			typ, reply = MsgMetrics, m
		default:
			closeFDs(fds)
			return fmt.Errorf("%w from the enforcer: %q", ErrUnexpected, f.Type)
		}
		if err := w.c.send(typ, f.Seq, reply); err != nil {
			return err
		}
	}
}

// apply takes a policy snapshot and the sockets that came with it.
func (w *child) apply(f Frame, fds []int) Result {
	var m Policy
	if err := decode(f, &m); err != nil {
		closeFDs(fds)
		return Result{Error: err.Error()}
	}
	if len(m.Sockets) != len(fds) {
		closeFDs(fds)
		return Result{Error: fmt.Sprintf("policy names %d sockets, %d came with it", len(m.Sockets), len(fds))}
	}
	w.mu.Lock()
	for i, fd := range fds {
		file := os.NewFile(uintptr(fd), "listener "+m.Sockets[i])
		ln, err := net.FileListener(file)
		file.Close()
		if err != nil {
			w.mu.Unlock()
			return Result{Error: fmt.Sprintf("socket for %s: %v", m.Sockets[i], err)}
		}
		if old, ok := w.socks[m.Sockets[i]]; ok {
			old.Close()
		}
		w.socks[m.Sockets[i]] = ln
	}
	w.mu.Unlock()
	p := new(policy.Policy)
	if err := json.Unmarshal(m.Policy, p); err != nil {
		return Result{Error: fmt.Sprintf("policy: %v", err)}
	}
	if err := w.cm.Apply(p); err != nil {
		return Result{Error: fmt.Sprintf("certs: %v", err)}
	}
	if err := w.px.Apply(p); err != nil {
		if w.prev != nil {
			_ = w.cm.Apply(w.prev)
		}
		return Result{Error: fmt.Sprintf("proxy: %v", err)}
	}
	w.mu.Lock()
	w.prev = p
	w.mu.Unlock()
	w.files.Keep(Files(p))
	return Result{}
}

func (w *child) status() Status {
	st := Status{Refusals: w.cm.Refusals()}
	w.mu.Lock()
	if w.prev != nil {
		st.Generation = w.prev.Generation
	}
	w.mu.Unlock()
	mfs, _ := w.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "gatehouse_proxy_connections_active" {
			continue
		}
		for _, m := range mf.GetMetric() {
			st.Sessions += int(m.GetGauge().GetValue())
		}
	}
	return st
}

func (w *child) metrics() (Metrics, error) {
	mfs, err := w.reg.Gather()
	if err != nil {
		w.log.Warn("gathering metrics", "err", err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return Metrics{}, err
		}
	}
	return Metrics{Families: b.Bytes()}, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var l slog.Level
	if level == "" {
		level = "info"
	}
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}
