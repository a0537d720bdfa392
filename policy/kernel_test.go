package policy

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestScanRefill(t *testing.T) {
	for _, tc := range []struct {
		ports  int
		window time.Duration
		rate   uint64
		unit   time.Duration
		gap    time.Duration
	}{
		{10, 10 * time.Second, 1, time.Second, time.Second},
		{5, 10 * time.Second, 30, time.Minute, 2 * time.Second},
		{100, 10 * time.Second, 10, time.Second, 100 * time.Millisecond},
		{10, time.Hour, 10, time.Hour, 6 * time.Minute},
		// Not a whole rate per second, minute, hour or day: a week's.
		{10, 7 * time.Second, 864000, 7 * 24 * time.Hour, 700 * time.Millisecond},
		// No unit gives a whole rate: rounded in weeks (1832727.27).
		{3, 990 * time.Millisecond, 1832727, 7 * 24 * time.Hour, 330000049 * time.Nanosecond},
	} {
		p := &Policy{Enforcement: Enforcement{ScanBlock: ScanBlock{DistinctPorts: tc.ports, Window: tc.window}}}
		if tc.window < time.Second {
			// Filter refuses windows under a second; refill itself
			// takes any.
			r := refill(p.Enforcement.ScanBlock)
			if r.Rate != tc.rate || r.Unit != tc.unit || r.Gap() != tc.gap {
				t.Errorf("%d ports in %s: %d per %s (gap %s), want %d per %s (gap %s)", tc.ports, tc.window, r.Rate, r.Unit, r.Gap(), tc.rate, tc.unit, tc.gap)
			}
			continue
		}
		f, err := p.Filter()
		if err != nil {
			t.Fatal(err)
		}
		r := f.Refill
		if r.Rate != tc.rate || r.Unit != tc.unit || r.Gap() != tc.gap || r.Burst != uint32(tc.ports-1) {
			t.Errorf("%d ports in %s: %d per %s (gap %s, burst %d), want %d per %s (gap %s, burst %d)",
				tc.ports, tc.window, r.Rate, r.Unit, r.Gap(), r.Burst, tc.rate, tc.unit, tc.gap, tc.ports-1)
		}
		if f.Scan.BlockFor != DefaultBlockFor {
			t.Errorf("block_for %s, want the default %s", f.Scan.BlockFor, DefaultBlockFor)
		}
	}
}

func TestFilter(t *testing.T) {
	p := &Policy{
		Enforcement: Enforcement{
			Mode: ModeStrict,
			Management: []Management{
				{Prefix: netip.MustParsePrefix("198.51.100.7/28"), Ports: []uint16{22}},
			},
			SourcePrefix: SourcePrefix{V4: 24, V6: 56},
		},
		Listeners: []Listener{{Port: 8443}, {Port: 443}, {Port: 443}},
	}
	f, err := p.Filter()
	if err != nil {
		t.Fatal(err)
	}
	if !f.Strict || f.SourceBits4 != 24 || f.SourceBits6 != 56 || len(f.Ports) != 2 || f.Ports[0] != 443 || f.Ports[1] != 8443 {
		t.Errorf("filter %+v", f)
	}
	if f.Management[0].Prefix != netip.MustParsePrefix("198.51.100.0/28") {
		t.Errorf("management %s, want it masked", f.Management[0].Prefix)
	}
	if f.Scan != (ScanBlock{}) || f.Refill != (ScanRefill{}) {
		t.Errorf("scan detection off, yet %+v %+v", f.Scan, f.Refill)
	}
	for name, bad := range map[string]func(*Policy){
		"mode":              func(p *Policy) { p.Enforcement.Mode = "open" },
		"management prefix": func(p *Policy) { p.Enforcement.Management[0].Prefix = netip.MustParsePrefix("::ffff:192.0.2.0/120") },
		"management ports":  func(p *Policy) { p.Enforcement.Management[0].Ports = nil },
		"management port 0": func(p *Policy) { p.Enforcement.Management[0].Ports = []uint16{0} },
		"listener port 0":   func(p *Policy) { p.Listeners[0].Port = 0 },
		"one port":          func(p *Policy) { p.Enforcement.ScanBlock = ScanBlock{DistinctPorts: 1, Window: time.Minute} },
		"short window":      func(p *Policy) { p.Enforcement.ScanBlock = ScanBlock{DistinctPorts: 5, Window: time.Millisecond} },
		"negative block": func(p *Policy) {
			p.Enforcement.ScanBlock = ScanBlock{DistinctPorts: 5, Window: time.Minute, BlockFor: -1}
		},
	} {
		q := *p
		q.Enforcement.Management = []Management{{Prefix: p.Enforcement.Management[0].Prefix, Ports: []uint16{22}}}
		q.Listeners = append([]Listener(nil), p.Listeners...)
		bad(&q)
		if _, err := q.Filter(); !errors.Is(err, ErrBadFilter) {
			t.Errorf("%s: %v, want ErrBadFilter", name, err)
		}
	}
	if _, err := (*Policy)(nil).Filter(); !errors.Is(err, ErrBadFilter) {
		t.Errorf("nil policy: %v", err)
	}
}
