//go:build gatehouse_testhooks

package worker

import (
	"encoding/json"
	"os"
	"os/signal"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Compiled only into test binaries (go build -tags gatehouse_testhooks):
// SIGUSR1 makes a worker try what its confinement must refuse and log
// each result; SIGUSR2 makes it send the enforcer a message the control
// protocol does not have.
func init() {
	startHooks = func(w *child) {
		ch := make(chan os.Signal, 2)
		signal.Notify(ch, syscall.SIGUSR1, syscall.SIGUSR2)
		go func() {
			for s := range ch {
				switch s {
				case syscall.SIGUSR1:
					r := probes()
					// The files the policy names: the enforcer hands their
					// content over; opening them must fail.
					w.mu.Lock()
					p := w.prev
					w.mu.Unlock()
					if p != nil {
						for _, f := range Files(p) {
							file, err := os.Open(f)
							if err == nil {
								file.Close()
							}
							r["open "+f] = probeResult(err)
						}
					}
					b, _ := json.Marshal(r)
					w.log.Info("test hook: probes", "pid", os.Getpid(), "results", string(b))
				case syscall.SIGUSR2:
					w.log.Info("test hook: sending a forged message", "pid", os.Getpid())
					_ = w.c.send("admit", 0, map[string]string{"addr": "192.0.2.66"})
				}
			}
		}()
	}
}

func probeResult(err error) string {
	if err == nil {
		return "ok"
	}
	if errno, ok := err.(syscall.Errno); ok {
		return unix.ErrnoName(errno)
	}
	if pe, ok := err.(*os.PathError); ok {
		if errno, ok := pe.Err.(syscall.Errno); ok {
			return unix.ErrnoName(errno)
		}
	}
	if se, ok := err.(*os.SyscallError); ok {
		if errno, ok := se.Err.(syscall.Errno); ok {
			return unix.ErrnoName(errno)
		}
	}
	return err.Error()
}

func probes() map[string]string {
	r := map[string]string{}
	f, err := os.Open("/etc/shadow")
	if err == nil {
		f.Close()
	}
	r["open /etc/shadow"] = probeResult(err)
	p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "true"}, &os.ProcAttr{})
	if err == nil {
		p.Wait()
	}
	r["exec /bin/sh"] = probeResult(err)
	attr := struct{ typ, keySize, valueSize, maxEntries uint32 }{typ: unix.BPF_MAP_TYPE_ARRAY, keySize: 4, valueSize: 4, maxEntries: 1}
	fd, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_MAP_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if e == 0 {
		unix.Close(int(fd))
		r["bpf map"] = "ok"
	} else {
		r["bpf map"] = probeResult(e)
	}
	sock := func(family, typ, proto int, bind unix.Sockaddr) error {
		fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if bind != nil {
			return unix.Bind(fd, bind)
		}
		return nil
	}
	r["netlink nftables socket"] = probeResult(sock(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER, nil))
	r["raw socket bind"] = probeResult(sock(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	return r
}
