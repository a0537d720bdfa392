package bpf

import (
	"testing"
)

// FuzzVerdict feeds arbitrary frames to both builds under the same policy:
// the parser must never fail a run, and the fast lookup and the LPM
// reference must agree on every frame.
func FuzzVerdict(f *testing.F) {
	for _, c := range verdictCases() {
		pkt := c.raw
		if pkt == nil {
			pkt = c.f.bytes()
		}
		f.Add(pkt, c.strict)
	}
	// One pair of rigs per mode, so that no generation is built per input.
	rigs := map[bool][2]*rig{}
	for _, strict := range []bool{false, true} {
		fast, lpm := newRig(f, false), newRig(f, true)
		fast.apply(f, testGeneration(strict))
		lpm.apply(f, testGeneration(strict))
		rigs[strict] = [2]*rig{fast, lpm}
	}
	f.Fuzz(func(t *testing.T, pkt []byte, strict bool) {
		if len(pkt) < 14 {
			return // BPF_PROG_TEST_RUN refuses frames shorter than Ethernet
		}
		r := rigs[strict]
		before := r[0].counters(t)
		a, b := r[0].run(t, pkt), r[1].run(t, pkt)
		if a != b {
			t.Fatalf("fast %d, lpm %d for %x", a, b, pkt)
		}
		if a != xdpPass && a != xdpDrop {
			t.Fatalf("action %d for %x", a, pkt)
		}
		// Every frame is counted exactly once, under the action returned.
		var counted [][2]int
		for k, v := range r[0].counters(t) {
			for range v - before[k] {
				counted = append(counted, k)
			}
		}
		want := 0 // pass
		if a == xdpDrop {
			want = 1
		}
		if len(counted) != 1 || counted[0][0] != want {
			t.Fatalf("action %d for %x counted as %v (action index, reason)", a, pkt, counted)
		}
	})
}
