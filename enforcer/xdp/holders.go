package xdp

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/link"
)

// LinkHolders returns the processes, other than this one, that hold the
// pinned XDP link of iface under pinDir open: a running daemon holds its
// link, whatever its configuration says now (an admin socket moved or
// turned off since it started, or a daemon too busy to answer). Nothing
// pinned is no holder. It reads /proc, as bpftool does to show a link's
// holders, which takes root to see other users' processes.
func LinkHolders(pinDir, iface string) ([]int, error) {
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	if !validInterface(iface) {
		return nil, fmt.Errorf("%w: %q", ErrNoInterface, iface)
	}
	var ids []string
	for _, mode := range []string{ModeNative, ModeGeneric} {
		l, err := link.LoadPinnedLink(linkPin(filepath.Join(pinDir, iface), mode), nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("xdp: load pinned link: %w", err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("xdp: link info: %w", err)
		}
		ids = append(ids, strconv.FormatUint(uint64(info.ID), 10))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("xdp: %w", err)
	}
	self := os.Getpid()
	var out []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		if holdsLink(pid, ids) {
			out = append(out, pid)
		}
	}
	return out, nil
}

// holdsLink reports whether process pid has a bpf_link fd open on one of
// the link ids. A process that exits meanwhile holds nothing.
func holdsLink(pid int, ids []string) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if err != nil || target != "anon_inode:bpf_link" {
			continue
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if ok && k == "link_id" {
				for _, id := range ids {
					if strings.TrimSpace(v) == id {
						f.Close()
						return true
					}
				}
			}
		}
		f.Close()
	}
	return false
}
