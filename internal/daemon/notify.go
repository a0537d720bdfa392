package daemon

import (
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// notifier speaks systemd's notify protocol (sd_notify) over the datagram
// socket named by NOTIFY_SOCKET; without one it does nothing.
type notifier struct {
	addr *net.UnixAddr
}

func newNotifier(socket string) *notifier {
	if socket == "" {
		return &notifier{}
	}
	// A leading '@' names an abstract socket.
	name := socket
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	return &notifier{addr: &net.UnixAddr{Name: name, Net: "unixgram"}}
}

func (n *notifier) notify(state string) error {
	if n.addr == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// watchdogInterval is half of WATCHDOG_USEC, as systemd recommends, or 0
// when the watchdog is off (or meant for another process).
func watchdogInterval(usec string, pid string, ourPID int) time.Duration {
	if usec == "" || (pid != "" && pid != fmt.Sprint(ourPID)) {
		return 0
	}
	var us int64
	if _, err := fmt.Sscan(usec, &us); err != nil || us <= 0 {
		return 0
	}
	return time.Duration(us) * time.Microsecond / 2
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
