package policy

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"time"
)

// DefaultBlockFor is how long scan detection blocks a source when the
// policy leaves ScanBlock.BlockFor zero.
const DefaultBlockFor = 10 * time.Minute

// Errors of the kernel layers.
var (
	// ErrBadFilter is returned by Policy.Filter for a policy neither
	// kernel layer could enforce.
	ErrBadFilter = errors.New("invalid policy for the kernel layers")
	// ErrBlocklistFull: a kernel layer's blocklist holds no more sources.
	// A block handed to it from the other layer is not tried again: it
	// would fail alike until blocks there expire.
	ErrBlocklistFull = errors.New("blocklist full")
)

// Filter is what both kernel layers (XDP and nftables) enforce of a
// policy, derived once so that they cannot read it differently.
type Filter struct {
	Strict bool
	// Ports are the listeners' TCP ports, sorted, without repeats.
	Ports []uint16
	// Management ranges, masked, each with its ports.
	Management []Management
	// SourceBits4 and SourceBits6 are how many leading bits of an address
	// make one source for every per-source limit, scan detection and the
	// blocklist.
	SourceBits4, SourceBits6 int
	// Scan is scan detection; Scan.DistinctPorts 0 means off (and Scan and
	// Refill are then zero). Scan.BlockFor is never zero when on.
	Scan   ScanBlock
	Refill ScanRefill
}

// ScanRefill is scan detection's token bucket, in the one form both
// layers can hold exactly: Burst new (source, port) pairs at once, and
// one more every Gap, where Gap is Unit divided by Rate in whole
// nanoseconds, as nftables' limit divides it. Unit is a second, minute,
// hour, day or week: the units a limit is listed in.
type ScanRefill struct {
	Rate  uint64
	Unit  time.Duration
	Burst uint32
}

// Gap is the time one new pair costs: Unit/Rate, rounded down.
func (r ScanRefill) Gap() time.Duration {
	if r.Rate == 0 {
		return 0
	}
	return time.Duration(uint64(r.Unit) / r.Rate)
}

// refillUnits are the units of an nftables limit, smallest first.
var refillUnits = []time.Duration{time.Second, time.Minute, time.Hour, 24 * time.Hour, 7 * 24 * time.Hour}

// refill turns "DistinctPorts within Window" into a bucket of
// DistinctPorts-1 pairs refilled at DistinctPorts per Window. The rate is
// given in the smallest unit where it is a whole number; where none is,
// in weeks, rounded to the nearest whole: off by at most half a pair a
// week (under 0.2% for two ports in an hour, less for more ports or a
// shorter window).
func refill(sb ScanBlock) ScanRefill {
	ports, win := uint64(sb.DistinctPorts), uint64(sb.Window)
	r := ScanRefill{Burst: uint32(sb.DistinctPorts - 1)}
	// ports × unit overflows 64 bits for a week; the window (a second or
	// more) keeps the quotient within them.
	for _, u := range refillUnits {
		hi, lo := bits.Mul64(ports, uint64(u))
		if q, rem := bits.Div64(hi, lo, win); rem == 0 && q >= 1 {
			r.Rate, r.Unit = q, u
			return r
		}
	}
	week := refillUnits[len(refillUnits)-1]
	hi, lo := bits.Mul64(ports, uint64(week))
	lo, carry := bits.Add64(lo, win/2, 0)
	q, _ := bits.Div64(hi+carry, lo, win)
	r.Rate, r.Unit = max(1, q), week
	return r
}

// Filter derives what the kernel layers enforce, refusing what neither
// could: an unknown mode, an invalid management range or port, a listener
// port 0, a scan detection setting out of range.
func (p *Policy) Filter() (*Filter, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil policy", ErrBadFilter)
	}
	en := p.Enforcement
	f := &Filter{
		Strict:      en.Mode == ModeStrict,
		SourceBits4: en.SourcePrefix.Bits(false),
		SourceBits6: en.SourcePrefix.Bits(true),
	}
	var errs []error
	switch en.Mode {
	case ModeStrict, ModeListeners, "":
	default:
		errs = append(errs, fmt.Errorf("unknown mode %q", en.Mode))
	}
	for _, pt := range p.ProtectedPorts() {
		if pt.Proto != "tcp" || pt.Num == 0 {
			errs = append(errs, fmt.Errorf("listener port %d/%s: only TCP ports other than 0", pt.Num, pt.Proto))
			continue
		}
		f.Ports = append(f.Ports, pt.Num)
	}
	for i, m := range en.Management {
		switch {
		case !m.Prefix.IsValid() || m.Prefix.Addr().Is4In6():
			errs = append(errs, fmt.Errorf("management[%d]: invalid prefix %s", i, m.Prefix))
		case len(m.Ports) == 0 || slices.Contains(m.Ports, 0):
			errs = append(errs, fmt.Errorf("management[%d] %s: needs ports other than 0", i, m.Prefix))
		default:
			f.Management = append(f.Management, Management{Prefix: m.Prefix.Masked(), Ports: slices.Clone(m.Ports)})
		}
	}
	if sb := en.ScanBlock; sb.DistinctPorts != 0 {
		switch {
		case sb.DistinctPorts < 2 || sb.DistinctPorts > 65535:
			errs = append(errs, fmt.Errorf("scan_block.distinct_ports %d: want 0 (off) or 2..65535", sb.DistinctPorts))
		case sb.Window < time.Second:
			errs = append(errs, fmt.Errorf("scan_block.window %s: want a second or more", sb.Window))
		case sb.BlockFor < 0:
			errs = append(errs, fmt.Errorf("scan_block.block_for %s below zero", sb.BlockFor))
		default:
			if sb.BlockFor == 0 {
				sb.BlockFor = DefaultBlockFor
			}
			f.Scan, f.Refill = sb, refill(sb)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadFilter, err)
	}
	return f, nil
}
