package worker

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is one running worker process and its end of the control socket.
type proc struct {
	cmd     *exec.Cmd
	c       *conn
	pid     int
	started time.Time
	sent    map[string]bool // listen addresses whose socket it has; under Pool.mu
	log     func(msg string, args ...any)

	seq     atomic.Uint64
	mu      sync.Mutex
	pending map[uint64]chan Frame
	gone    chan struct{} // the reader ended: no answer will come
	exited  chan struct{} // the process was reaped
	state   *os.ProcessState
}

// spawn starts the worker of slot s: /proc/self/exe worker, its control
// socket as fd 3, started as the worker user with only CAP_SETPCAP in its
// ambient set so that it can empty its bounding set (sandbox.Apply clears
// that last capability too); then the hello exchange.
func (pl *Pool) spawn(s *slot) (*proc, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	parent, child := os.NewFile(uintptr(fds[0]), "control"), os.NewFile(uintptr(fds[1]), "control (worker)")
	cmd := exec.Command(pl.cfg.Exe, pl.cfg.Args...)
	cmd.Env = pl.cfg.Env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	cmd.Stdout, cmd.Stderr = pl.cfg.Stdout, pl.cfg.Stderr
	cmd.ExtraFiles = []*os.File{child}
	readWrite, ticketDir := pl.cfg.ReadWrite, ""
	if pl.cfg.TicketDir != "" {
		dir, err := os.OpenFile(pl.cfg.TicketDir, os.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			parent.Close()
			child.Close()
			return nil, fmt.Errorf("ticket directory: %w", err)
		}
		defer dir.Close()
		cmd.ExtraFiles = append(cmd.ExtraFiles, dir)
		ticketDir = fmt.Sprintf("/proc/self/fd/%d", TicketFD)
		readWrite = append(readWrite[:len(readWrite):len(readWrite)], ticketDir)
	}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: uint32(pl.cfg.UID), Gid: uint32(pl.cfg.GID), Groups: []uint32{}},
		AmbientCaps: []uintptr{unix.CAP_SETPCAP},
	}
	err = cmd.Start()
	child.Close()
	if err != nil {
		parent.Close()
		return nil, err
	}
	c, err := newConn(parent)
	parent.Close()
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	pr := &proc{cmd: cmd, c: c, pid: cmd.Process.Pid, started: time.Now(), sent: map[string]bool{},
		pending: map[uint64]chan Frame{}, gone: make(chan struct{}), exited: make(chan struct{})}
	pr.log = func(msg string, args ...any) {
		pl.log.Error(msg, append([]any{"worker", s.idx, "pid", pr.pid}, args...)...)
	}
	go func() {
		_ = cmd.Wait()
		pr.state = cmd.ProcessState
		close(pr.exited)
	}()
	fail := func(err error) (*proc, error) {
		pr.kill()
		<-pr.exited
		return nil, fmt.Errorf("%w (worker exit: %v)", err, pr.state)
	}
	h := Hello{Version: Version, Index: s.idx, UID: pl.cfg.UID, GID: pl.cfg.GID, ReadOnly: pl.cfg.ReadOnly,
		ReadWrite: readWrite, TicketDir: ticketDir, LogFormat: pl.cfg.LogFormat, LogLevel: pl.cfg.LogLevel}
	if err := c.send(MsgHello, 0, h); err != nil {
		return fail(fmt.Errorf("hello: %w", err))
	}
	c.uc.SetReadDeadline(time.Now().Add(pl.cfg.Timeout))
	f, extra, err := c.recv()
	closeFDs(extra)
	c.uc.SetReadDeadline(time.Time{})
	if err != nil {
		return fail(fmt.Errorf("waiting for the worker's hello: %w", err))
	}
	var back Hello
	if f.Type != MsgHello {
		return fail(fmt.Errorf("%w: %q instead of hello", ErrUnexpected, f.Type))
	}
	if err := decode(f, &back); err != nil {
		return fail(err)
	}
	if back.Version != Version || back.PID != pr.pid || len(extra) > 0 {
		return fail(fmt.Errorf("%w: worker hello version %d pid %d (want %d, %d)", ErrVersion, back.Version, back.PID, Version, pr.pid))
	}
	go pr.read()
	pl.log.Info("worker started", "worker", s.idx, "pid", pr.pid, "uid", pl.cfg.UID, "landlock_abi", back.LandlockABI,
		"seccomp_syscalls", back.Seccomp)
	return pr, nil
}

// read delivers answers to their requests. Anything else a worker sends
// (an unknown type, an answer nobody asked for, descriptors, a malformed
// or oversize frame) is logged and the worker is killed: it restarts.
func (pr *proc) read() {
	defer close(pr.gone)
	for {
		f, fds, err := pr.c.recv()
		if len(fds) > 0 {
			closeFDs(fds)
			pr.broken(errors.New("a worker sent descriptors"))
			return
		}
		if err != nil {
			select {
			case <-pr.exited:
			default:
				if !errors.Is(err, os.ErrClosed) {
					pr.broken(err)
				}
			}
			return
		}
		switch f.Type {
		case MsgResult, MsgStatus, MsgMetrics:
		default:
			pr.broken(fmt.Errorf("%w from a worker: %q", ErrUnexpected, f.Type))
			return
		}
		pr.mu.Lock()
		ch, ok := pr.pending[f.Seq]
		delete(pr.pending, f.Seq)
		pr.mu.Unlock()
		if !ok {
			pr.broken(fmt.Errorf("%w: answer %d to no request", ErrUnexpected, f.Seq))
			return
		}
		ch <- f
	}
}

// broken logs why a worker is no longer trusted and kills it.
func (pr *proc) broken(err error) {
	pr.log("worker broke the control protocol: killing it", "err", err)
	pr.kill()
}

func (pr *proc) kill() {
	_ = pr.cmd.Process.Kill()
	pr.c.Close()
}

// request sends one message and waits for its answer.
func (pr *proc) request(typ string, body any, timeout time.Duration, fds ...int) (Frame, error) {
	seq := pr.seq.Add(1)
	ch := make(chan Frame, 1)
	pr.mu.Lock()
	pr.pending[seq] = ch
	pr.mu.Unlock()
	defer func() {
		pr.mu.Lock()
		delete(pr.pending, seq)
		pr.mu.Unlock()
	}()
	if err := pr.c.send(typ, seq, body, fds...); err != nil {
		return Frame{}, fmt.Errorf("%s: %w", typ, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case f := <-ch:
		return pr.answer(typ, f)
	case <-pr.gone:
		// The reader hands the answer over before it ends: a worker that
		// answered and then exited (drain) has answered. select picks
		// at random when both are ready, so look again.
		select {
		case f := <-ch:
			return pr.answer(typ, f)
		default:
		}
		return Frame{}, fmt.Errorf("%s: worker gone (%v)", typ, pr.exitState())
	case <-t.C:
		err := fmt.Errorf("%s: no answer within %s", typ, timeout)
		pr.broken(err)
		return Frame{}, err
	}
}

// answer checks that f is the kind of frame that answers typ.
func (pr *proc) answer(typ string, f Frame) (Frame, error) {
	want := typ
	if typ == MsgPolicy || typ == MsgFiles || typ == MsgDrain || typ == MsgRevalidate || typ == MsgCut {
		want = MsgResult
	}
	if f.Type != want {
		err := fmt.Errorf("%w: %q answers %q", ErrUnexpected, f.Type, typ)
		pr.broken(err)
		return Frame{}, err
	}
	return f, nil
}

func (pr *proc) exitState() any {
	select {
	case <-pr.exited:
		return pr.state
	case <-time.After(time.Second):
		return "running"
	}
}
