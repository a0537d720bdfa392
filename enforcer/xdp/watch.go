package xdp

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/gatehouse-dmz/gatehouse/bpf"
)

// Errors of CheckAttached.
var (
	// ErrDetached: the filter's link no longer attaches the program to the
	// interface (bpftool link detach, gatehouse teardown --force, the
	// interface removed).
	ErrDetached = errors.New("filter detached from the interface")
	// ErrUnpinned: the filter is attached but its link pin is gone, so it
	// would be detached when this process exits.
	ErrUnpinned = errors.New("filter attached but its link is no longer pinned")
)

// HoldsPrevious reports, before the first Apply, whether the Enforcer
// adopted a filter that a previous run left attached and pinned: that
// filter enforces the previous run's last generation. The daemon asks so
// that a generation built without every feed's release (a lost state
// directory, an unreachable feed) does not replace it. After an Apply the
// answer means nothing.
func (e *Enforcer) HoldsPrevious() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.closed && e.link != nil
}

// CheckAttached reports whether the filter is still attached to its
// interface and pinned: nil, ErrDetached or ErrUnpinned (wrapped with
// details), or another error when the kernel could not be asked. Before
// the first attach there is nothing to check: nil.
func (e *Enforcer) CheckAttached() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	return e.checkLocked()
}

func (e *Enforcer) checkLocked() error {
	if e.link == nil {
		return nil
	}
	info, err := e.link.Info()
	if err != nil {
		return fmt.Errorf("link info: %w", err)
	}
	x := info.XDP()
	switch {
	case x == nil || x.Ifindex == 0:
		return fmt.Errorf("%w %s", ErrDetached, e.iface)
	case int(x.Ifindex) != e.ifindex:
		return fmt.Errorf("%w %s: the link points at ifindex %d, not %d", ErrDetached, e.iface, x.Ifindex, e.ifindex)
	}
	paths := []string{linkPin(e.dir, e.mode)}
	if !e.pending {
		for _, name := range pinnedMaps {
			paths = append(paths, filepath.Join(e.dir, pinName(name)))
		}
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%w: %w", ErrUnpinned, err)
		}
	}
	return nil
}

// Repair puts back what CheckAttached found missing: a detached filter is
// attached again (a new link, in the configured mode) with the maps, and so
// the generation, in force; missing pins are pinned again. Nothing is
// rebuilt: the program reads the same maps, so it enforces exactly what it
// did. It refuses while this run's maps hold no policy yet (an older
// layout's filter was adopted and no Apply has replaced it): attaching them
// would enforce nothing.
func (e *Enforcer) Repair() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	err := e.checkLocked()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrUnpinned):
		if err := e.repinMissing(); err != nil {
			return err
		}
		path := linkPin(e.dir, e.mode)
		if _, err := os.Stat(path); err != nil {
			// The link remembers its pin: forget it, then pin again.
			if err := e.link.Unpin(); err != nil {
				return fmt.Errorf("unpin link: %w", err)
			}
			if err := e.link.Pin(path); err != nil {
				return fmt.Errorf("pin link: %w", err)
			}
		}
	case errors.Is(err, ErrDetached):
		if e.pending {
			return fmt.Errorf("cannot attach again: this run's maps hold no policy yet (the filter of an older layout was adopted); it returns with the next policy applied")
		}
		// An interface deleted and created again under its name (a VLAN
		// or bond rebuilt, a NIC re-probed) has another index: look it up
		// again, in the namespace the filter belongs to. When it is gone,
		// nothing is attempted (no attach failure logged per mode).
		idx, err := e.lookupIndex()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(e.dir, 0o700); err != nil {
			return fmt.Errorf("pin directory: %w", err)
		}
		oldIdx := e.ifindex
		e.ifindex = idx
		old, oldPin := e.link, linkPin(e.dir, e.mode)
		if err := os.Remove(oldPin); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("unpin detached link: %w", err)
		}
		e.link = nil
		// attachNew pins the maps again too.
		if err := e.attachNew(); err != nil {
			e.link, e.ifindex = old, oldIdx
			return err
		}
		if idx != oldIdx {
			e.log.Info("interface found under a new index", "was", oldIdx, "ifindex", idx)
		}
		old.Close()
	default:
		return err
	}
	e.repinGeneration()
	return nil
}

// repinMissing pins again every map whose pin is gone.
func (e *Enforcer) repinMissing() error {
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return fmt.Errorf("pin directory: %w", err)
	}
	if e.pending {
		return nil // this run's maps are pinned by the Apply that fills them
	}
	for _, name := range pinnedMaps {
		if _, err := os.Stat(filepath.Join(e.dir, pinName(name))); err == nil {
			continue
		}
		if err := e.pinMap(name); err != nil {
			return err
		}
	}
	return nil
}

// repinGeneration pins the generation in force again when its pin is gone
// (a teardown removed the pin directory). Without it a restart checks the
// layout by map ID, which needs CAP_SYS_ADMIN; so this is best effort, and
// the next Apply pins a generation anyway.
func (e *Enforcer) repinGeneration() {
	pin := filepath.Join(e.dir, genPin)
	if _, err := os.Stat(pin); err == nil {
		return
	}
	var id uint32
	if err := e.coll.Maps[bpf.MapGen].Lookup(uint32(0), &id); err != nil || id == 0 {
		return
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		e.log.Warn("generation in force not pinned again; the next policy applied pins it", "error", err)
		return
	}
	defer m.Close()
	if err := m.Pin(pin); err != nil {
		e.log.Warn("pin generation", "error", err)
	}
}

// lookupIndex finds the interface's index by name in the filter's network
// namespace.
func (e *Enforcer) lookupIndex() (int, error) {
	var idx int
	err := inNetns(e.netns, func() error {
		ifc, err := net.InterfaceByName(e.iface)
		if err != nil {
			return err
		}
		idx = ifc.Index
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", e.iface, err)
	}
	return idx, nil
}
