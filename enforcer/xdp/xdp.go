package xdp

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/bpf"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// DefaultPinDir is where the link and maps are pinned, one directory per
// interface.
const DefaultPinDir = "/sys/fs/bpf/gatehouse"

// Attach modes reported by AttachMode and gatehouse_xdp_attach_mode.
const (
	ModeNative  = "native"
	ModeGeneric = "generic"
)

// Errors returned by New, Apply and Block.
var (
	ErrNoInterface = errors.New("xdp: no interface configured")
	ErrOff         = errors.New("xdp: enforcement.xdp is off")
	ErrBadMode     = errors.New("xdp: unknown attach mode")
	ErrNotBPFFS    = errors.New("xdp: pin directory is not on a bpf filesystem")
	ErrClosed      = errors.New("xdp: enforcer closed")
	ErrBadAddr     = errors.New("xdp: invalid address")
)

// pinned maps, by their name in the object; each is pinned under its name,
// except the data section of gh_block_active, pinned as gh_state.
var pinnedMaps = []string{bpf.MapGen, bpf.MapCounters, bpf.MapState, bpf.MapBlock4, bpf.MapBlock6}

func pinName(name string) string {
	if name == bpf.MapState {
		return "gh_state"
	}
	return name
}

// Config configures the XDP layer of one interface.
type Config struct {
	Interface string
	Mode      policy.XDPMode
	// PinDir holds one directory per interface with the pinned link and
	// maps. Empty means DefaultPinDir.
	PinDir string
	Logger *slog.Logger
	// OnBlock, if set, is called by Run once for every source the
	// program's scan detection has blocked, with its first address (see
	// policy.SourcePrefix) and the time it stays blocked; it mirrors the
	// block into the nftables layer. Sources that came in through Block
	// are not handed back. An error is logged and the call repeated at the
	// next poll.
	OnBlock func(addr netip.Addr, d time.Duration) error
	// BlockPollInterval is how often Run reads the blocklists. Zero means
	// DefaultBlockPollInterval.
	BlockPollInterval time.Duration
}

// DefaultBlockPollInterval is how often Run reads the blocklists.
const DefaultBlockPollInterval = time.Second

// validInterface refuses names that would not stay one directory below the
// pin directory ("..", ".", anything with a slash).
func validInterface(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

func (c *Config) validate() error {
	switch {
	case !validInterface(c.Interface):
		return fmt.Errorf("%w: %q", ErrNoInterface, c.Interface)
	case c.Mode == policy.XDPOff:
		return ErrOff
	case c.Mode != policy.XDPAuto && c.Mode != policy.XDPNative && c.Mode != policy.XDPGeneric && c.Mode != "":
		return fmt.Errorf("%w: %q", ErrBadMode, c.Mode)
	}
	return nil
}

// Enforcer is the XDP admission filter on one interface: a loaded program,
// its pinned maps and its pinned bpf_link.
type Enforcer struct {
	log     *slog.Logger
	iface   string
	ifindex int
	netns   int // fd of the network namespace ifindex belongs to
	dir     string
	mode    string // "" until attached
	want    policy.XDPMode
	eph     [2]uint16

	onBlock func(netip.Addr, time.Duration) error
	pollGap time.Duration

	mu      sync.Mutex
	closed  bool
	coll    *ebpf.Collection
	link    link.Link
	pending bool // maps are new: repin and move the link at the first Apply
	lastGC  time.Time
	// source and mgmt are those of the generation in force: how Block
	// keys a source, and the ranges it never blocks.
	source policy.SourcePrefix
	mgmt   []netip.Prefix
	// known holds the blocked sources already reported or pushed in, with
	// their deadlines (monotonic ns).
	known   map[netip.Addr]uint64
	metrics *metrics
}

// New loads the program for the interface, in the network namespace of the
// calling thread. When a compatible link and maps are pinned already (a
// restart), it adopts them: the maps keep their contents and the link is
// moved to the new program in place, so there is no moment without a
// filter. Incompatible pinned maps (an older layout) are replaced at the
// first Apply, while the old program keeps enforcing until then. With
// nothing pinned, the first successful Apply attaches the program: it never
// runs without a policy.
func New(cfg Config) (*Enforcer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	pinDir := cfg.PinDir
	if pinDir == "" {
		pinDir = DefaultPinDir
	}
	e := &Enforcer{
		log:     logger.With("component", "xdp", "interface", cfg.Interface),
		iface:   cfg.Interface,
		dir:     filepath.Join(pinDir, cfg.Interface),
		onBlock: cfg.OnBlock,
		pollGap: cfg.BlockPollInterval,
		known:   map[netip.Addr]uint64{},
		metrics: newMetrics(),
	}
	if e.pollGap <= 0 {
		e.pollGap = DefaultBlockPollInterval
	}
	if err := ensureBPFFS(pinDir, pinDir == DefaultPinDir, e.log); err != nil {
		return nil, err
	}
	ifc, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("xdp: interface %q: %w", cfg.Interface, err)
	}
	e.ifindex = ifc.Index
	// The index means this interface only in this network namespace; the
	// first Apply, which attaches, may run on a thread of another.
	e.netns, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("xdp: network namespace: %w", err)
	}
	if err := e.init(cfg.Mode); err != nil {
		unix.Close(e.netns)
		return nil, err
	}
	return e, nil
}

// init is New after the namespace is open: on error New closes it.
func (e *Enforcer) init(mode policy.XDPMode) error {
	e.eph = ephemeralPorts()
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("xdp: memlock: %w", err)
	}
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return fmt.Errorf("xdp: pin directory: %w", err)
	}
	if err := e.load(); err != nil {
		return err
	}
	if err := e.adopt(mode); err != nil {
		e.coll.Close()
		return err
	}
	return nil
}

// load loads the program, reusing the pinned maps when all are compatible.
func (e *Enforcer) load() error {
	spec, err := bpf.Spec(false)
	if err != nil {
		return fmt.Errorf("xdp: %w", err)
	}
	replace, err := e.pinnedCompatible(spec)
	if err != nil {
		return err
	}
	opts := ebpf.CollectionOptions{MapReplacements: replace}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	for _, m := range replace {
		m.Close() // the collection holds clones
	}
	if err != nil {
		return fmt.Errorf("xdp: load program: %w", err)
	}
	e.coll = coll
	if replace == nil {
		e.pending = true
	}
	return nil
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
				return fmt.Errorf("xdp: update pinned link: %w", err)
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
			return fmt.Errorf("xdp: pin link: %w", err)
		}
		e.pending = false
		e.link, e.mode = l, mode
		e.log.Info("attached", "mode", mode, "ifindex", e.ifindex)
		return nil
	}
	return fmt.Errorf("xdp: attach to %s: %w", e.iface, errors.Join(errs...))
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
		path := filepath.Join(e.dir, pinName(name))
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("xdp: unpin old %s: %w", name, err)
		}
		if err := e.coll.Maps[name].Pin(path); err != nil {
			return fmt.Errorf("xdp: pin %s: %w", name, err)
		}
	}
	return nil
}

// AttachMode is "native" or "generic"; "" before the first Apply of a
// first start.
func (e *Enforcer) AttachMode() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mode
}

// Apply makes p the policy in force with one update of the outer map. On
// error the previous generation stays in force.
func (e *Enforcer) Apply(p *policy.Policy) error {
	start := time.Now()
	if p == nil {
		return errors.New("xdp: nil policy")
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("xdp: %w", err)
	}
	g, mgmt := compile(p, e.eph)
	pages, err := g.Encode()
	if err != nil {
		return fmt.Errorf("xdp: encode generation %d: %w", p.Generation, err)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	outer := e.coll.Maps[bpf.MapGen]
	gen, err := bpf.NewGenerationMap(pages)
	if err != nil {
		return fmt.Errorf("xdp: generation %d: %w", p.Generation, err)
	}
	defer gen.Close() // the outer map keeps its own reference
	if err := bpf.Publish(outer, gen); err != nil {
		return fmt.Errorf("xdp: generation %d: %w", p.Generation, err)
	}
	// Best effort: without the pin a restart checks the layout by ID.
	pin := filepath.Join(e.dir, genPin)
	if err := os.Remove(pin); err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.log.Warn("unpin previous generation", "error", err)
	} else if err := gen.Pin(pin); err != nil {
		e.log.Warn("pin generation", "error", err)
	}
	e.source, e.mgmt = p.Enforcement.SourcePrefix, mgmt
	e.sweepLocked(monotonic())
	if e.link == nil {
		// First start: attach now that the maps hold a policy.
		if err := e.attachNew(); err != nil {
			return err
		}
	} else if e.pending {
		// Fresh maps beside an adopted link: now that they hold the
		// policy, move the link to the new program and the pins to the
		// new maps.
		if err := e.link.Update(e.coll.Programs[bpf.ProgXDP]); err != nil {
			return fmt.Errorf("xdp: move link to new program: %w", err)
		}
		if err := e.pinMaps(); err != nil {
			return err
		}
		e.pending = false
		e.log.Info("replaced pinned maps of an older layout")
	}
	// gatehouse_policy_apply_seconds{layer="xdp"} is the daemon's: it times
	// every layer's Apply alike.
	d := time.Since(start)
	e.log.Info("applied", "generation", p.Generation, "v4", len(g.V4), "v6", len(g.V6),
		"pages", pages.Count, "duration", d)
	return nil
}

// Close releases this process's handles. The pinned link and maps stay:
// the filter keeps dropping until Teardown.
func (e *Enforcer) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	var errs []error
	if e.link != nil {
		errs = append(errs, e.link.Close())
	}
	e.coll.Close()
	unix.Close(e.netns)
	return errors.Join(errs...)
}
