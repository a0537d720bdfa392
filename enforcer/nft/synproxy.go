package nft

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// synOptions are the TCP options synproxy answers a SYN to a listener port
// with. The client keeps them for the whole connection, though its other
// end is the real listener, which synproxy connects to only after the
// cookie came back: so they must be what that listener would have said.
// Synproxy translates sequence numbers and timestamps, not the window
// scale, so a window scale larger than the listener's makes the client
// overrun its window, and a smaller one only slows it.
type synOptions struct {
	// mss4 and mss6 are the MSS of the outside interface's MTU.
	mss4, mss6 uint16
	// wscale is the window scale of the appliance's own sockets, as its
	// kernel computes it from net.ipv4.tcp_rmem and net.core.rmem_max.
	wscale uint8
	// wscaleFwd is for routed flows, whose listener is an internal host
	// gatehouse cannot ask: the appliance's, but at most 7, a Linux
	// host's default (Windows uses 8), since a smaller one is the safe
	// side.
	wscaleFwd uint8
}

// Fallbacks of synOptions: a 1500-byte MTU and Linux's default window
// scale (tcp_rmem up to 6 MiB).
const (
	defaultMTU    = 1500
	defaultWScale = 7
	maxWScale     = 14 // RFC 7323
)

func defaultSynOptions() synOptions {
	return synOptionsFor(defaultMTU, defaultWScale)
}

func synOptionsFor(mtu int, wscale uint8) synOptions {
	// The smallest MTUs each family must carry: 576 (IPv4), 1280 (IPv6).
	mss4 := max(mtu, 576) - 40
	mss6 := max(mtu, 1280) - 60
	return synOptions{mss4: uint16(min(mss4, 65535)), mss6: uint16(min(mss6, 65535)),
		wscale: wscale, wscaleFwd: min(wscale, defaultWScale)}
}

// readSynOptions reads what the appliance's stack would answer a SYN with
// in the network namespace netns (0: the current one): the MTU of iface
// ("" or missing: 1500) and the window scale of its sockets.
func readSynOptions(netns int, iface string) (o synOptions, err error) {
	err = inNetns(netns, func() error {
		mtu := defaultMTU
		if iface != "" {
			if ifc, err := net.InterfaceByName(iface); err == nil {
				mtu = ifc.MTU
			}
		}
		ws, err := windowScale()
		if err != nil {
			return err
		}
		o = synOptionsFor(mtu, ws)
		return nil
	})
	return o, err
}

// windowScale computes the window scale Linux gives a socket without
// SO_RCVBUF: enough to announce the largest receive buffer, the larger of
// net.ipv4.tcp_rmem's maximum and net.core.rmem_max.
func windowScale() (uint8, error) {
	rmem, err := readSysctlInts("net/ipv4/tcp_rmem", 3)
	if err != nil {
		return 0, err
	}
	rmax, err := readSysctlInts("net/core/rmem_max", 1)
	if err != nil {
		return 0, err
	}
	space := max(rmem[2], rmax[0], 1)
	return uint8(min(max(bits.Len64(space)-1-15, 0), maxWScale)), nil
}

func readSysctlInts(key string, n int) ([]uint64, error) {
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(string(b))
	if len(f) != n {
		return nil, fmt.Errorf("%s: %q: want %d numbers", key, b, n)
	}
	out := make([]uint64, n)
	for i, s := range f {
		if out[i], err = strconv.ParseUint(s, 10, 64); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
	}
	return out, nil
}

// inNetns runs f on a thread in the network namespace netns (0: the
// current one, where f runs as called). Entering another namespace needs
// CAP_SYS_ADMIN; the daemon works in its own and never does. A thread that
// cannot be switched back stays locked and dies with its goroutine.
func inNetns(netns int, f func() error) error {
	if netns == 0 {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(netns, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace: %w", err))
			return // the thread stays locked: it must not be reused
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
