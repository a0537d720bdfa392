package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/psx"
)

// Capabilities and no_new_privs are per thread in Linux, and the Go runtime
// has started several threads before any code runs: every change below is
// made on all of them (psx, or the standard library's all-threads setuid
// family), and verifyThreads reads every thread back.

// allThreadsPrctl calls prctl(2) on every thread of the process.
func allThreadsPrctl(option, arg2 uintptr) error {
	if _, _, e := psx.Syscall6(unix.SYS_PRCTL, option, arg2, 0, 0, 0, 0); e != 0 {
		return e
	}
	return nil
}

// dropPrivileges leaves the process, on every thread, with no_new_privs
// set, empty capability sets (bounding, ambient, inheritable, permitted,
// effective), no supplementary groups, and uid/gid (real, effective,
// saved) switched to the worker's.
func dropPrivileges(uid, gid int) error {
	if err := allThreadsPrctl(unix.PR_SET_NO_NEW_PRIVS, 1); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	// The bounding set first: dropping it needs CAP_SETPCAP, which the
	// switch of user below takes away.
	last, err := lastCap()
	if err != nil {
		return err
	}
	for c := 0; c <= last; c++ {
		if err := allThreadsPrctl(unix.PR_CAPBSET_DROP, uintptr(c)); err != nil {
			// Without CAP_SETPCAP (started unprivileged) the set can only
			// be dropped already; verifyThreads checks that it is.
			if errors.Is(err, unix.EPERM) {
				break
			}
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	if err := allThreadsPrctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if os.Getuid() != uid || os.Geteuid() != uid || os.Getgid() != gid || os.Getegid() != gid {
		// Groups before the user: after setresuid there is no CAP_SETGID.
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("drop supplementary groups: %w", err)
		}
		if err := syscall.Setresgid(gid, gid, gid); err != nil {
			return fmt.Errorf("set gid %d: %w", gid, err)
		}
		if err := syscall.Setresuid(uid, uid, uid); err != nil {
			return fmt.Errorf("set uid %d: %w", uid, err)
		}
	}
	// A switch away from root clears permitted and effective; clear them
	// (and inheritable) explicitly for the case of no switch.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if _, _, e := psx.Syscall3(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return fmt.Errorf("clear capabilities: %w", e)
	}
	return verifyThreads(uid, gid)
}

// lastCap is the highest capability number this kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse cap_last_cap: %w", err)
	}
	return n, nil
}

// ThreadStatus is what /proc/<pid>/task/<tid>/status says about one
// thread's confinement.
type ThreadStatus struct {
	TID                                int
	CapInh, CapPrm, CapEff, CapBnd     uint64
	CapAmb                             uint64
	NoNewPrivs, Seccomp, SeccompFilter int
	UIDs, GIDs                         [4]int // real, effective, saved, file system
}

// ReadThreads reads the status of every thread of process pid (0: this
// process).
func ReadThreads(pid int) ([]ThreadStatus, error) {
	dir := "/proc/self/task"
	if pid != 0 {
		dir = fmt.Sprintf("/proc/%d/task", pid)
	}
	tids, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []ThreadStatus
	for _, e := range tids {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStatus(filepath.Join(dir, e.Name(), "status"))
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread ended meanwhile
		}
		if err != nil {
			return nil, err
		}
		st.TID = tid
		out = append(out, st)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no threads", dir)
	}
	return out, nil
}

func readStatus(path string) (ThreadStatus, error) {
	f, err := os.Open(path)
	if err != nil {
		return ThreadStatus{}, err
	}
	defer f.Close()
	var st ThreadStatus
	hex := func(v string, dst *uint64) error {
		n, err := strconv.ParseUint(v, 16, 64)
		*dst = n
		return err
	}
	ids := func(v string, dst *[4]int) error {
		f := strings.Fields(v)
		if len(f) != 4 {
			return fmt.Errorf("want 4 ids, got %q", v)
		}
		for i := range f {
			n, err := strconv.Atoi(f[i])
			if err != nil {
				return err
			}
			dst[i] = n
		}
		return nil
	}
	dec := func(v string, dst *int) (err error) { *dst, err = strconv.Atoi(v); return err }
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var err error
		switch k {
		case "CapInh":
			err = hex(v, &st.CapInh)
		case "CapPrm":
			err = hex(v, &st.CapPrm)
		case "CapEff":
			err = hex(v, &st.CapEff)
		case "CapBnd":
			err = hex(v, &st.CapBnd)
		case "CapAmb":
			err = hex(v, &st.CapAmb)
		case "NoNewPrivs":
			err = dec(v, &st.NoNewPrivs)
		case "Seccomp":
			err = dec(v, &st.Seccomp)
		case "Seccomp_filters":
			err = dec(v, &st.SeccompFilter)
		case "Uid":
			err = ids(v, &st.UIDs)
		case "Gid":
			err = ids(v, &st.GIDs)
		}
		if err != nil {
			return ThreadStatus{}, fmt.Errorf("%s: %s: %w", path, k, err)
		}
	}
	return st, s.Err()
}

// Problems lists how a thread falls short of a confined worker running as
// uid/gid with no capabilities and no_new_privs; nil when it does not.
func (t ThreadStatus) Problems(uid, gid int) []string {
	var p []string
	for _, c := range []struct {
		name string
		v    uint64
	}{{"CapInh", t.CapInh}, {"CapPrm", t.CapPrm}, {"CapEff", t.CapEff}, {"CapBnd", t.CapBnd}, {"CapAmb", t.CapAmb}} {
		if c.v != 0 {
			p = append(p, fmt.Sprintf("thread %d: %s %016x, want 0", t.TID, c.name, c.v))
		}
	}
	if t.NoNewPrivs != 1 {
		p = append(p, fmt.Sprintf("thread %d: NoNewPrivs %d, want 1", t.TID, t.NoNewPrivs))
	}
	if t.UIDs != [4]int{uid, uid, uid, uid} || t.GIDs != [4]int{gid, gid, gid, gid} {
		p = append(p, fmt.Sprintf("thread %d: uids %v gids %v, want all %d/%d", t.TID, t.UIDs, t.GIDs, uid, gid))
	}
	return p
}

// verifyThreads fails unless every thread is down to uid/gid with nothing.
func verifyThreads(uid, gid int) error {
	threads, err := ReadThreads(0)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	var problems []string
	for _, t := range threads {
		problems = append(problems, t.Problems(uid, gid)...)
	}
	if len(problems) > 0 {
		return fmt.Errorf("verify: %s", strings.Join(problems, "; "))
	}
	return nil
}
