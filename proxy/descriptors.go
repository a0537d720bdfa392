package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Bounds of the descriptor reserve (see DescriptorReserve).
const (
	minReserve = 64
	maxReserve = 1024
)

// DescriptorReserve is how many descriptors below RLIMIT_NOFILE (limit)
// the proxy keeps free: it closes new connections at once while the
// process is within them, so that the control plane (the nftables netlink
// socket, certificate and CRL files on reload, XDP maps, feed downloads,
// the admin socket and metrics) can always open what it needs. A
// sixteenth of the limit, between 64 and 1024.
func DescriptorReserve(limit int) int {
	return min(maxReserve, max(minReserve, limit/16))
}

// Counting the open descriptors means reading /proc/self/fd, which costs
// a few milliseconds with tens of thousands open: the count is sampled and
// kept current in between by the proxy's own connections, each of which
// may hold two descriptors (client and backend). Near the reserve it is
// sampled more often, since that is where the estimate matters. The
// kernel gives a new connection the lowest free descriptor, so its number
// is a floor of the count as well; the estimate takes the higher.
const (
	samplePeriod     = time.Second
	nearSamplePeriod = 50 * time.Millisecond
)

// descriptors estimates how close the process is to RLIMIT_NOFILE.
type descriptors struct {
	live atomic.Int64 // the proxy's client connections open now

	mu        sync.Mutex
	sampledAt time.Time
	open      int   // descriptors open at the sample
	liveThen  int64 // live at the sample
	limit     int   // the soft RLIMIT_NOFILE at the sample
	err       error // of the last sample
}

// low reports whether the process is within the reserve now, with the
// estimate it went by and the limit. fd is the descriptor of the
// connection just accepted (-1 if unknown).
func (d *descriptors) low(now time.Time, fd int) (bool, int, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	est := max(d.estimate(), fd+1)
	near := d.limit > 0 && est >= d.limit-2*DescriptorReserve(d.limit)
	if age := now.Sub(d.sampledAt); age >= samplePeriod || near && age >= nearSamplePeriod {
		d.sample(now)
		est = max(d.estimate(), fd+1)
	}
	if d.limit <= 0 {
		return false, est, d.limit // no limit known: nothing to keep
	}
	return est >= d.limit-DescriptorReserve(d.limit), est, d.limit
}

func (d *descriptors) estimate() int {
	return d.open + 2*int(d.live.Load()-d.liveThen)
}

// sample counts the open descriptors. d.mu is held.
func (d *descriptors) sample(now time.Time) {
	d.sampledAt = now
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		d.err = fmt.Errorf("read RLIMIT_NOFILE: %w", err)
		return
	}
	n, err := countOpen()
	if err != nil {
		// Without a count, assume the worst we know: the last count plus
		// what the proxy opened since.
		d.err = err
		return
	}
	d.err = nil
	d.open, d.liveThen = n, d.live.Load()
	d.limit = int(min(rl.Cur, uint64(1<<31-1)))
}

// fdOf returns the descriptor number of c, or -1.
func fdOf(c any) int {
	fd := -1
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			rc.Control(func(f uintptr) { fd = int(f) })
		}
	}
	return fd
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
