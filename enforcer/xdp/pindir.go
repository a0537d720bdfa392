package xdp

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// PinScope says whether pins in a directory outlive the daemon.
type PinScope int

const (
	// PinShared: the bpffs is mounted in PID 1's mount namespace (the
	// host's), so the pinned filter stays after the daemon exits.
	PinShared PinScope = iota
	// PinPrivate: the bpffs exists only in the daemon's own mount
	// namespace (started under `ip netns exec` or `unshare -m`, which give
	// the process a mount namespace of its own, and mounted there): when
	// the process exits the namespace goes, the bpffs with it, and the
	// filter is detached.
	PinPrivate
	// PinUnknown: PID 1's mounts cannot be read (hidden /proc), or PID 1
	// is not the host's init (the daemon runs in a PID namespace of its
	// own, as in a container), and nothing else tells.
	PinUnknown
)

func (s PinScope) String() string {
	switch s {
	case PinShared:
		return "shared with the host"
	case PinPrivate:
		return "private to this mount namespace"
	}
	return "unknown"
}

// CheckPinDir reports whether the pins of dir would outlive the daemon, with
// a sentence saying how it knows. An error means the daemon could not pin
// there at all: dir is not on a bpffs (ErrNotBPFFS), except that the default
// directory may lack its bpffs, which the daemon mounts at /sys/fs/bpf (in
// its own mount namespace: shared only when that is PID 1's).
func CheckPinDir(dir string) (PinScope, string, error) {
	if dir == "" {
		dir = DefaultPinDir
	}
	probe := dir
	if dir == DefaultPinDir {
		probe = filepath.Dir(DefaultPinDir)
	} else if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		probe = filepath.Dir(dir) // created by the daemon, on its parent's filesystem
	}
	if !onBPFFS(probe) {
		if dir != DefaultPinDir {
			return PinUnknown, "", fmt.Errorf("%w: %s", ErrNotBPFFS, dir)
		}
		same, err := hostMountNamespace()
		switch {
		case err != nil:
			return PinUnknown, fmt.Sprintf("no bpffs at %s yet, and whether the daemon's mount namespace is the host's cannot be told (%v)", probe, err), nil
		case same:
			return PinShared, fmt.Sprintf("no bpffs at %s yet; the daemon mounts one in the host's mount namespace", probe), nil
		}
		return PinPrivate, fmt.Sprintf("no bpffs at %s in this mount namespace, which is not the host's (PID 1's): the daemon would mount one that exists only here", probe), nil
	}
	var st unix.Stat_t
	if err := unix.Stat(probe, &st); err != nil {
		return PinUnknown, "", fmt.Errorf("pin directory: %w", err)
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	ours, err := bpfMounts("/proc/self/mountinfo", dev)
	if err != nil || len(ours) == 0 {
		return PinUnknown, fmt.Sprintf("the bpffs of %s (device %s) is not found in this process's mounts (%v)", dir, dev, err), nil
	}
	if isHost, err := hostInit(); err != nil || !isHost {
		// PID 1 is this PID namespace's init (a container), whose mount
		// namespace may well be the container's own: finding the bpffs
		// there says nothing of the host. Not finding it there still
		// means it is private to this process's mount namespace.
		for _, m := range ours {
			if m.propagated {
				return PinShared, fmt.Sprintf("bpffs at %s receives mounts from another namespace (PID 1 is not the host's init: %s)", m.point, notHostInit(err)), nil
			}
		}
		if in, ierr := bpfMounts("/proc/1/mountinfo", dev); ierr == nil && len(in) == 0 && err == nil {
			return PinPrivate, fmt.Sprintf("bpffs at %s is mounted neither in the host's mount namespace nor in this PID namespace's init's: it lives only as long as this process's mount namespace", ours[0].point), nil
		}
		return PinUnknown, fmt.Sprintf("bpffs at %s; PID 1 is not the host's init (%s), so whether the bpffs is the host's cannot be told from here", ours[0].point, notHostInit(err)), nil
	}
	host, err := bpfMounts("/proc/1/mountinfo", dev)
	if err != nil {
		// A mount that receives propagation from another namespace (a
		// systemd service's copy of the host's /sys/fs/bpf) is the host's.
		for _, m := range ours {
			if m.propagated {
				return PinShared, fmt.Sprintf("bpffs at %s receives mounts from another namespace (PID 1's mounts unreadable: %v)", m.point, err), nil
			}
		}
		return PinUnknown, fmt.Sprintf("bpffs at %s; PID 1's mounts cannot be read (%v)", ours[0].point, err), nil
	}
	if len(host) > 0 {
		return PinShared, fmt.Sprintf("bpffs at %s is mounted at %s in the host's (PID 1's) mount namespace", ours[0].point, host[0].point), nil
	}
	return PinPrivate, fmt.Sprintf("bpffs at %s is not mounted in the host's (PID 1's) mount namespace: it lives only as long as this process's mount namespace (ip netns exec, unshare -m)", ours[0].point), nil
}

// bpfMount is one line of a mountinfo file for a bpf filesystem.
type bpfMount struct {
	point      string
	propagated bool // shared:N or master:N
}

// bpfMounts lists the bpf mounts of device dev ("major:minor") in a
// mountinfo file (proc(5)).
func bpfMounts(path, dev string) ([]bpfMount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []bpfMount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root point options [optional…] - fstype source super
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		l, r := strings.Fields(left), strings.Fields(right)
		if len(l) < 6 || len(r) < 1 || r[0] != "bpf" || l[2] != dev {
			continue
		}
		m := bpfMount{point: unescapeMount(l[4])}
		for _, opt := range l[6:] {
			if strings.HasPrefix(opt, "shared:") || strings.HasPrefix(opt, "master:") {
				m.propagated = true
			}
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// procPIDInitIno is the inode number of the first PID namespace, the
// host's (PROC_PID_INIT_INO in include/linux/proc_ns.h, fixed since Linux
// 3.8).
const procPIDInitIno = 0xEFFFFFFC

// hostInit reports whether PID 1, as this /proc shows it, is the host's
// init: in a PID namespace of its own (a container, unshare -p) PID 1 is
// that namespace's first process, and its mounts are not the host's. When
// PID 1's namespace cannot be looked at (no ptrace access to it), this
// process's own PID namespace tells.
func hostInit() (bool, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/1/ns/pid", &st); err != nil {
		if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
			return false, fmt.Errorf("PID namespace: %w", err)
		}
	}
	return st.Ino == procPIDInitIno, nil
}

func notHostInit(err error) string {
	if err != nil {
		return err.Error()
	}
	return "this process runs in a PID namespace of its own, as in a container"
}

// hostMountNamespace reports whether this process shares PID 1's mount
// namespace, PID 1 being the host's init: mount IDs are unique across
// namespaces, so the same root mount ID in both mountinfo files means the
// same namespace.
func hostMountNamespace() (bool, error) {
	if isHost, err := hostInit(); err != nil || !isHost {
		return false, fmt.Errorf("PID 1 is not the host's init: %s", notHostInit(err))
	}
	root := func(path string) (string, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[4] == "/" {
				return f[0], nil
			}
		}
		return "", fmt.Errorf("%s: no root mount", path)
	}
	ours, err := root("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	host, err := root("/proc/1/mountinfo")
	if err != nil {
		return false, err
	}
	return ours == host, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + (c - '0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
