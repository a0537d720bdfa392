package xdp

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// inNetns runs f in the network namespace nsfd. A daemon calls it from its
// own namespace, where f runs on the calling thread (entering a namespace
// needs CAP_SYS_ADMIN, which the service does not have). From another
// namespace f runs on a thread of its own that is never unlocked, so the
// runtime discards it afterwards instead of handing it to other goroutines.
func inNetns(nsfd int, f func() error) error {
	runtime.LockOSThread()
	same, err := sameNetns(nsfd)
	if err != nil || same {
		defer runtime.UnlockOSThread()
		if err != nil {
			return fmt.Errorf("network namespace: %w", err)
		}
		return f()
	}
	runtime.UnlockOSThread()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// sameNetns reports whether the calling thread is in the namespace nsfd.
func sameNetns(nsfd int) (bool, error) {
	var want, cur unix.Stat_t
	if err := unix.Fstat(nsfd, &want); err != nil {
		return false, err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &cur); err != nil {
		return false, err
	}
	return want.Dev == cur.Dev && want.Ino == cur.Ino, nil
}

// Teardown removes the filter from the interface: it detaches the pinned
// link and deletes the pinned maps and the directory. Nothing pinned is not
// an error.
func Teardown(pinDir, iface string) error {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if !validInterface(iface) {
		return fmt.Errorf("%w: %q", ErrNoInterface, iface)
	}
	dir := filepath.Join(pinDir, iface)
	var errs []error
	for _, mode := range []string{ModeNative, ModeGeneric} {
		path := linkPin(dir, mode)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("xdp: load pinned link: %w", err))
			continue
		}
		// Detach at once, even if another process still holds the link.
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("xdp: detach: %w", err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("xdp: unpin link: %w", err))
		}
		l.Close()
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return errors.Join(errs...)
	}
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("xdp: %w", err))...)
	}
	for _, ent := range entries {
		if err := os.Remove(filepath.Join(dir, ent.Name())); err != nil {
			errs = append(errs, fmt.Errorf("xdp: unpin %s: %w", ent.Name(), err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("xdp: %w", err))
	}
	return errors.Join(errs...)
}

// ensureBPFFS checks that dir is on a bpf filesystem. For the default
// directory it mounts one at /sys/fs/bpf when none is there.
func ensureBPFFS(dir string, isDefault bool, log *slog.Logger) error {
	root := dir
	if isDefault {
		root = filepath.Dir(DefaultPinDir)
	}
	if onBPFFS(root) {
		return nil
	}
	if !isDefault {
		// A non-default directory may not exist yet: check its parent.
		if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) && onBPFFS(filepath.Dir(root)) {
			return nil
		}
		return fmt.Errorf("%w: %s", ErrNotBPFFS, dir)
	}
	if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", root, err)
	}
	log.Info("mounted bpffs", "path", root)
	return nil
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && uint32(st.Type) == unix.BPF_FS_MAGIC
}

// ephemeralPorts reads the local port range of the calling thread's
// namespace; the Linux default when it cannot.
func ephemeralPorts() [2]uint16 {
	def := [2]uint16{32768, 60999}
	// /proc/sys/net shows the namespace of the thread that opens it.
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return def
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return def
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo == 0 || lo > hi {
		return def
	}
	return [2]uint16{uint16(lo), uint16(hi)}
}

func monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return uint64(ts.Nano())
}
