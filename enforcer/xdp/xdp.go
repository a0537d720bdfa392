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
	ErrNoInterface = errors.New("no interface configured")
	ErrOff         = errors.New("enforcement.xdp is off")
	ErrBadMode     = errors.New("unknown attach mode")
	ErrNotBPFFS    = errors.New("pin directory is not on a bpf filesystem")
	ErrClosed      = errors.New("enforcer closed")
	ErrBadAddr     = errors.New("invalid address")
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
	// are not handed back, and a restart hands over once more what the
	// blocklists hold. At most mirrorBudget calls are made per poll. An
	// error wrapping policy.ErrBlocklistFull is final; any other is
	// counted, logged at most once a minute, and the call repeated at the
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
	// noConntrack is why the program was loaded without its conntrack
	// lookup (bpf.WithoutConntrack); nil when it has it.
	noConntrack error
	lastGC      time.Time
	// bits are the source prefix lengths of the generation in force: how
	// Block keys a source. Zero before the first Apply.
	bits sourceBits
	// known holds the blocked sources already reported or pushed in.
	known   map[netip.Addr]blockState
	metrics *metrics
	// mirrorLog paces Run's warning about blocks OnBlock refused.
	mirrorLog logLimit
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
		log:       logger.With("component", "xdp", "interface", cfg.Interface),
		iface:     cfg.Interface,
		dir:       filepath.Join(pinDir, cfg.Interface),
		onBlock:   cfg.OnBlock,
		pollGap:   cfg.BlockPollInterval,
		known:     map[netip.Addr]blockState{},
		metrics:   newMetrics(),
		mirrorLog: logLimit{every: time.Minute},
	}
	if e.pollGap <= 0 {
		e.pollGap = DefaultBlockPollInterval
	}
	if err := ensureBPFFS(pinDir, pinDir == DefaultPinDir, e.log); err != nil {
		return nil, err
	}
	ifc, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", cfg.Interface, err)
	}
	e.ifindex = ifc.Index
	// The index means this interface only in this network namespace; the
	// first Apply, which attaches, may run on a thread of another.
	e.netns, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("network namespace: %w", err)
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
		return fmt.Errorf("memlock: %w", err)
	}
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		return fmt.Errorf("pin directory: %w", err)
	}
	if err := e.load(); err != nil {
		return err
	}
	if err := e.adopt(mode); err != nil {
		e.coll.Close()
		return err
	}
	if !e.pending {
		e.seedLocked() // adopted blocklists: no one else has the Enforcer yet
	}
	return nil
}

// Apply makes p the policy in force with one update of the outer map. On
// error the previous generation stays in force.
func (e *Enforcer) Apply(p *policy.Policy) error {
	start := time.Now()
	if p == nil {
		return errors.New("nil policy")
	}
	if err := p.Validate(); err != nil {
		return err
	}
	g, err := compile(p, e.eph)
	if err != nil {
		return fmt.Errorf("compile: %w", err)
	}
	pages, err := g.Encode()
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	outer := e.coll.Maps[bpf.MapGen]
	gen, err := bpf.NewGenerationMap(pages)
	if err != nil {
		return fmt.Errorf("create generation map: %w", err)
	}
	defer gen.Close() // the outer map keeps its own reference
	bits := sourceBits{g.SourceBits4, g.SourceBits6}
	dropOld := func() {}
	if bits != e.bits && !e.pending {
		// The blocklists may hold keys of another source prefix: of the
		// generation in force, or of a previous run's.
		dropOld = e.rekeyLocked(bits)
	}
	if err := bpf.Publish(outer, gen); err != nil {
		return fmt.Errorf("publish generation map: %w", err)
	}
	dropOld()
	e.bits = bits
	// Best effort: without the pin a restart checks the layout by ID.
	pin := filepath.Join(e.dir, genPin)
	if err := os.Remove(pin); err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.log.Warn("unpin previous generation", "error", err)
	} else if err := gen.Pin(pin); err != nil {
		e.log.Warn("pin generation", "error", err)
	}
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
			return fmt.Errorf("move link to new program: %w", err)
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
	e.log.Debug("applied", "generation", p.Generation, "v4", len(g.V4), "v6", len(g.V6),
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
