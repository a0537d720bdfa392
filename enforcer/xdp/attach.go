package xdp

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/gatehouse-dmz/gatehouse/bpf"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// Loading the program, adopting what a previous run pinned, attaching and
// pinning.

// load loads the program, reusing the pinned maps when all are compatible.
// Where the kernel refuses the program with its conntrack lookup (no
// conntrack kfuncs), it loads it without the lookup (bpf.WithoutConntrack),
// which drops what the lookup would have passed, and says so loudly: in the
// log, in gatehouse_xdp_conntrack_lookup and in status.
func (e *Enforcer) load() error {
	spec, err := bpf.Spec(false)
	if err != nil {
		return fmt.Errorf("program: %w", err)
	}
	replace, err := e.pinnedCompatible(spec)
	if err != nil {
		return err
	}
	defer func() {
		for _, m := range replace {
			m.Close() // the collection holds clones
		}
	}()
	loadConntrack(e.log)
	opts := ebpf.CollectionOptions{MapReplacements: replace}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		full := err
		if spec, err = bpf.Spec(false); err != nil {
			return fmt.Errorf("program: %w", err)
		}
		if err := bpf.WithoutConntrack(spec); err != nil {
			return fmt.Errorf("load program: %w", errors.Join(full, err))
		}
		if coll, err = ebpf.NewCollectionWithOptions(spec, opts); err != nil {
			return fmt.Errorf("load program: %w", errors.Join(full, err))
		}
		e.noConntrack = full
		e.log.Error(NoConntrackWarning, "error", full)
	}
	e.coll = coll
	if replace == nil {
		e.pending = true
	}
	return nil
}

// NoConntrackWarning is logged, and shown by status, when the program runs
// without its conntrack lookup.
const NoConntrackWarning = "XDP filter runs without its conntrack lookup (the kernel has no conntrack kfuncs): " +
	"in strict mode it drops UDP answers to the appliance's own flows on ports outside the ephemeral range " +
	"(an NTP answer to port 123) unless their source is admitted to a listener port or management"

// loadConntrack loads nf_conntrack where it is a module not loaded yet: the
// program's lookup needs the kfuncs in its BTF, and the nftables table
// needs the module anyway. Where modprobe fails, load finds out.
func loadConntrack(log *slog.Logger) {
	if _, err := os.Stat("/sys/module/nf_conntrack"); err == nil {
		return // built in or loaded
	}
	out, err := exec.Command("modprobe", "nf_conntrack").CombinedOutput()
	if err != nil {
		log.Warn("modprobe nf_conntrack", "error", err, "output", strings.TrimSpace(string(out)))
		return
	}
	log.Info("loaded kernel module nf_conntrack for the conntrack lookup")
}

// ConntrackLookup reports whether the loaded program asks conntrack about
// answers its stateless verdict would drop, and if not, why.
func (e *Enforcer) ConntrackLookup() (bool, error) {
	return e.noConntrack == nil, e.noConntrack
}

// pinnedCompatible returns the pinned maps if every one is there and
// matches the spec (and the generation in force has the current layout);
// nil means "start with fresh maps".
func (e *Enforcer) pinnedCompatible(spec *ebpf.CollectionSpec) (map[string]*ebpf.Map, error) {
	out := map[string]*ebpf.Map{}
	fail := func(reason string, args ...any) (map[string]*ebpf.Map, error) {
		for _, m := range out {
			m.Close()
		}
		e.log.Info("pinned maps not adopted, replacing them", append([]any{"reason", reason}, args...)...)
		return nil, nil
	}
	for _, name := range pinnedMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(e.dir, pinName(name)), nil)
		if errors.Is(err, fs.ErrNotExist) {
			if len(out) == 0 {
				return nil, nil // nothing pinned: a first start
			}
			return fail("missing", "map", name)
		}
		if err != nil {
			return fail("unreadable", "map", name, "error", err)
		}
		out[name] = m
		if err := spec.Maps[name].Compatible(m); err != nil {
			return fail("incompatible", "map", name, "error", err)
		}
	}
	if ok, err := e.currentLayout(out[bpf.MapGen]); !ok {
		return fail("generation layout", "error", err)
	}
	e.log.Info("adopting pinned maps", "dir", e.dir)
	return out, nil
}

// genPin is the pin of the generation in force, kept so that a restarted
// daemon can check its layout with CAP_BPF alone (looking a map up by ID
// needs CAP_SYS_ADMIN).
const genPin = "gh_generation"

// currentLayout reports whether the outer map is empty or holds a
// generation with this build's layout.
func (e *Enforcer) currentLayout(outer *ebpf.Map) (bool, error) {
	var id uint32
	err := outer.Lookup(uint32(0), &id)
	if errors.Is(err, ebpf.ErrKeyNotExist) || err == nil && id == 0 {
		return true, nil // no generation yet
	}
	if err != nil {
		// Unknown is not compatible: adopting would move the link to a
		// program that may not read the generation in force.
		return false, fmt.Errorf("generation in force: %w", err)
	}
	inner, err := ebpf.LoadPinnedMap(filepath.Join(e.dir, genPin), nil)
	if err == nil {
		info, ierr := inner.Info()
		if mid, ok := info.ID(); ierr != nil || !ok || uint32(mid) != id {
			inner.Close()
			inner, err = nil, fmt.Errorf("pinned generation is not the one in force")
		}
	}
	if err != nil {
		var berr error
		if inner, berr = ebpf.NewMapFromID(ebpf.MapID(id)); berr != nil {
			return false, errors.Join(err, berr)
		}
	}
	defer inner.Close()
	if inner.ValueSize() != bpf.PageSize || inner.MaxEntries() != bpf.MaxPages {
		return false, fmt.Errorf("generation map of %d×%d", inner.MaxEntries(), inner.ValueSize())
	}
	hdr := make([]byte, bpf.PageSize)
	if err := inner.Lookup(uint32(0), &hdr); err != nil {
		return false, err
	}
	magic := uint32(hdr[0]) | uint32(hdr[1])<<8 | uint32(hdr[2])<<16 | uint32(hdr[3])<<24
	if magic != bpf.Magic {
		return false, fmt.Errorf("layout %#x, want %#x", magic, bpf.Magic)
	}
	return true, nil
}

func linkPin(dir, mode string) string { return filepath.Join(dir, "link_"+mode) }

// adopt takes over a pinned link of this interface, if there is one. A
// first start attaches nothing here: the program is attached by the first
// Apply, once it holds a policy, so a daemon that fails to apply its first
// policy never leaves a filter behind that passes everything.
func (e *Enforcer) adopt(want policy.XDPMode) error {
	e.want = want
	prog := e.coll.Programs[bpf.ProgXDP]
	for _, mode := range []string{ModeNative, ModeGeneric} {
		l, err := link.LoadPinnedLink(linkPin(e.dir, mode), nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err == nil {
			err = e.sameInterface(l)
		}
		if err != nil {
			e.log.Warn("pinned link not adopted, attaching anew", "error", err)
			if l != nil {
				l.Close()
			}
			os.Remove(linkPin(e.dir, mode))
			continue
		}
		if !e.pending {
			// Same maps: the new program takes over in place.
			if err := l.Update(prog); err != nil {
				l.Close()
				return fmt.Errorf("update pinned link: %w", err)
			}
		}
		e.link, e.mode = l, mode
		if (want == policy.XDPNative || want == policy.XDPGeneric) && string(want) != mode {
			// Re-attaching in the other mode would open a window; a mode
			// change takes effect after `gatehouse teardown`.
			e.log.Warn("pinned link kept in its mode; tear down to change it", "mode", mode, "configured", want)
		}
		e.log.Info("adopted pinned link", "mode", mode, "program_moved", !e.pending)
		return nil
	}
	e.log.Info("no pinned filter; attaching with the first policy")
	return nil
}

// attachNew attaches the program in the configured mode (native first for
// auto) and pins the maps and the link.
func (e *Enforcer) attachNew() error {
	prog := e.coll.Programs[bpf.ProgXDP]
	modes := []string{ModeNative, ModeGeneric}
	switch e.want {
	case policy.XDPNative:
		modes = []string{ModeNative}
	case policy.XDPGeneric:
		modes = []string{ModeGeneric}
	}
	var errs []error
	for _, mode := range modes {
		flags := link.XDPDriverMode
		if mode == ModeGeneric {
			flags = link.XDPGenericMode
		}
		var l link.Link
		err := inNetns(e.netns, func() (err error) {
			l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: e.ifindex, Flags: flags})
			return err
		})
		if err != nil {
			e.log.Warn("attach failed", "mode", mode, "error", err)
			errs = append(errs, fmt.Errorf("%s: %w", mode, err))
			continue
		}
		// Pin the maps first: a pinned link whose maps are not pinned
		// could not be adopted.
		if err := e.pinMaps(); err != nil {
			l.Close()
			return err
		}
		if err := l.Pin(linkPin(e.dir, mode)); err != nil {
			l.Close()
			return fmt.Errorf("pin link: %w", err)
		}
		e.pending = false
		e.link, e.mode = l, mode
		e.log.Info("attached", "mode", mode, "ifindex", e.ifindex)
		return nil
	}
	return fmt.Errorf("attach to %s: %w", e.iface, errors.Join(errs...))
}

func (e *Enforcer) sameInterface(l link.Link) error {
	info, err := l.Info()
	if err != nil {
		return err
	}
	x := info.XDP()
	if x == nil || int(x.Ifindex) != e.ifindex {
		return fmt.Errorf("pinned link is not attached to ifindex %d", e.ifindex)
	}
	return nil
}

// pinMaps pins this collection's maps, replacing whatever is pinned.
func (e *Enforcer) pinMaps() error {
	for _, name := range pinnedMaps {
		if err := e.pinMap(name); err != nil {
			return err
		}
	}
	return nil
}

// pinMap pins one of this collection's maps at its path, whatever is
// there. A map remembers where it is pinned and takes a Pin to that same
// path for done, even when the file is gone: so it forgets its pin first
// (removing the file if it is still there), and a pin of another map (an
// older layout's) is removed before pinning.
func (e *Enforcer) pinMap(name string) error {
	path := filepath.Join(e.dir, pinName(name))
	m := e.coll.Maps[name]
	if err := m.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unpin old %s: %w", name, err)
	}
	if err := m.Pin(path); err != nil {
		return fmt.Errorf("pin %s: %w", name, err)
	}
	return nil
}

// AttachMode is "native" or "generic" while the filter is attached to its
// interface, as the kernel reports it; "" before the first Apply of a first
// start and while the link is detached.
func (e *Enforcer) AttachMode() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.link == nil || e.sameInterface(e.link) != nil {
		return ""
	}
	return e.mode
}
