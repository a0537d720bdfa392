package relay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrDescriptors refuses a backend connection while the process is within
// its descriptor reserve.
var ErrDescriptors = errors.New("descriptor reserve reached")

// Bounds of the descriptor reserve (see DescriptorReserve).
const (
	minReserve = 64
	maxReserve = 1024
)

// DescriptorReserve is how many descriptors below RLIMIT_NOFILE (limit)
// the proxies keep free for the control plane (the nftables netlink
// socket, certificate and CRL files on reload, XDP maps, feed downloads,
// the admin socket and metrics): a sixteenth of the limit, between 64 and
// 1024.
func DescriptorReserve(limit int) int {
	return min(maxReserve, max(minReserve, limit/16))
}

// How often the open descriptors are counted. The proxies count every
// descriptor they open and close themselves (Hold, Dialer), so a count
// only has to follow the control plane's, which change slowly; near the
// reserve it runs more often. A count lists /proc/self/fd, which takes
// milliseconds with tens of thousands open: it runs in its own goroutine,
// never where a connection waits, and takes at most a tenth of that
// goroutine's time.
const (
	samplePeriod     = time.Second
	nearSamplePeriod = 50 * time.Millisecond
	sampleDuty       = 10
)

// Descriptors keeps the process out of its descriptor reserve: the
// proxies ask it before they keep a client connection (Low) or open a
// backend connection (Dialer), and it answers from atomics, an estimate
// of the descriptors open now: the last count of /proc/self/fd, plus what
// the proxies opened since, minus what they closed.
type Descriptors struct {
	held   atomic.Int64             // descriptors the proxies hold now
	last   atomic.Pointer[fdSample] // the last count
	limit  atomic.Int64             // the soft RLIMIT_NOFILE last read
	kick   chan struct{}
	stop   chan struct{}
	done   chan struct{}
	closed sync.Once

	in    atomic.Bool         // within the reserve at the last Low
	count func() (int, error) // countOpen; tests replace it
	cfg   DescriptorsConfig
}

// DescriptorsConfig says whom Descriptors tells of what; nil hears
// nothing.
type DescriptorsConfig struct {
	// CountFailed hears of a count of the open descriptors, or a read of
	// RLIMIT_NOFILE, that failed (once for each run of failures). The
	// reserve then goes by the last count and the proxies' own, and by
	// the limit last read, never by none.
	CountFailed func(error)
	// Reserve hears when Low's answer changes: the process reached its
	// reserve (reached true) or left it, with the estimate and limit.
	Reserve func(reached bool, open, limit int)
	// Control, when not nil, runs before every backend connect with the
	// address actually dialled (net.Dialer.Control): an error refuses the
	// connection before a packet leaves. A connector's allow-list.
	Control func(network, address string, c syscall.RawConn) error
}

// fdSample is one count of the open descriptors.
type fdSample struct {
	open int   // descriptors open then
	held int64 // Descriptors.held then
}

// NewDescriptors counts the open descriptors once and keeps counting in
// the background until Close.
func NewDescriptors(cfg DescriptorsConfig) *Descriptors {
	return newDescriptors(countOpen, cfg)
}

// Control is DescriptorsConfig.Control, for the dialers of backends.
func (d *Descriptors) Control() func(network, address string, c syscall.RawConn) error {
	return d.cfg.Control
}

func newDescriptors(count func() (int, error), cfg DescriptorsConfig) *Descriptors {
	if cfg.CountFailed == nil {
		cfg.CountFailed = func(error) {}
	}
	if cfg.Reserve == nil {
		cfg.Reserve = func(bool, int, int) {}
	}
	d := &Descriptors{
		kick:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		count: count,
		cfg:   cfg,
	}
	d.last.Store(&fdSample{})
	var failing bool
	d.sample(&failing)
	go d.run(failing)
	return d
}

// Close stops the background count.
func (d *Descriptors) Close() {
	d.closed.Do(func() { close(d.stop) })
	<-d.done
}

// Hold counts a descriptor a proxy keeps (an accepted connection); Release
// gives it back when it is closed.
func (d *Descriptors) Hold()    { d.held.Add(1) }
func (d *Descriptors) Release() { d.held.Add(-1) }

// Low reports whether the process is within the reserve now, with the
// estimate it went by and the limit; fd, when not negative, is the
// descriptor of a connection just accepted, whose number is a floor of the
// count (the kernel hands out the lowest free one). It only reads atomics
// and RLIMIT_NOFILE, which a running process may have changed.
func (d *Descriptors) Low(fd int) (low bool, open, limit int) {
	limit = d.readLimit()
	open, _ = d.estimate()
	open = max(open, fd+1)
	if limit <= 0 {
		return false, open, limit // unreachable but for a kernel without RLIMIT_NOFILE
	}
	if open >= limit-2*DescriptorReserve(limit) {
		select { // near: a fresh count, soon
		case d.kick <- struct{}{}:
		default:
		}
	}
	low = open >= limit-DescriptorReserve(limit)
	if d.in.Swap(low) != low {
		d.cfg.Reserve(low, open, limit)
	}
	return low, open, limit
}

// estimate returns the descriptors open now as the last count and the
// proxies' own tell, and the limit last read.
func (d *Descriptors) estimate() (open, limit int) {
	s := d.last.Load()
	return s.open + int(d.held.Load()-s.held), int(d.limit.Load())
}

// readLimit returns the soft RLIMIT_NOFILE, or the last one read when the
// kernel does not answer.
func (d *Descriptors) readLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return int(d.limit.Load())
	}
	l := int64(min(rl.Cur, uint64(1<<31-1)))
	d.limit.Store(l)
	return int(l)
}

// Dialer returns dial counting every connection it opens until it is
// closed, and refusing with ErrDescriptors, before it dials, while the
// process is within the reserve.
func (d *Descriptors) Dialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if low, _, _ := d.Low(-1); low {
			return nil, fmt.Errorf("dial %s: %w", addr, ErrDescriptors)
		}
		d.Hold()
		c, err := dial(ctx, network, addr)
		if err != nil {
			d.Release()
			return nil, err
		}
		return &heldConn{Conn: c, d: d}, nil
	}
}

// heldConn gives its descriptor back to Descriptors when it is closed.
type heldConn struct {
	net.Conn
	d    *Descriptors
	once sync.Once
}

func (c *heldConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.d.Release)
	return err
}

// CloseWrite half-closes the connection when it can, as a relay needs.
func (c *heldConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (d *Descriptors) run(failing bool) {
	defer close(d.done)
	now := time.Now()
	next := now.Add(samplePeriod) // the next count
	earliest := now               // kicks wait for this: a tenth of the time at most
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-d.stop:
			t.Stop()
			return
		case <-t.C:
		case <-d.kick:
			t.Stop()
			if wait := time.Until(earliest); wait > 0 {
				select {
				case <-d.stop:
					return
				case <-time.After(wait):
				}
			}
		}
		start := time.Now()
		took := d.sample(&failing)
		period := samplePeriod
		if open, limit := d.estimate(); limit > 0 && open >= limit-2*DescriptorReserve(limit) {
			period = nearSamplePeriod
		}
		next = start.Add(max(period, sampleDuty*took))
		earliest = start.Add(max(nearSamplePeriod, sampleDuty*took))
	}
}

// sample counts the open descriptors and reads the limit; it returns how
// long the count took. *failing tracks a run of failures, told once.
func (d *Descriptors) sample(failing *bool) time.Duration {
	start := time.Now()
	var rl syscall.Rlimit
	rerr := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	if rerr == nil {
		d.limit.Store(int64(min(rl.Cur, uint64(1<<31-1))))
	}
	held := d.held.Load()
	n, cerr := d.count()
	if cerr == nil {
		d.last.Store(&fdSample{open: n, held: held})
	}
	took := time.Since(start)
	err := errors.Join(cerr, rerr)
	switch {
	case err != nil && !*failing:
		d.cfg.CountFailed(err)
		*failing = true
	case err == nil:
		*failing = false
	}
	return took
}

// countOpen counts the process's open descriptors by listing
// /proc/self/fd, without sorting or allocating a name per entry.
func countOpen() (int, error) {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("count open descriptors: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 32<<10)
	n := 0
	for {
		k, err := syscall.ReadDirent(int(f.Fd()), buf)
		if err != nil {
			return 0, fmt.Errorf("count open descriptors: %w", err)
		}
		if k <= 0 {
			break
		}
		for b := buf[:k]; len(b) >= 19; {
			// linux_dirent64: ino 8, off 8, reclen 2, type 1, name.
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				break
			}
			if name, _, _ := bytes.Cut(b[19:reclen], []byte{0}); string(name) != "." && string(name) != ".." {
				n++
			}
			b = b[reclen:]
		}
	}
	return n - 1, nil // the directory's own descriptor
}
