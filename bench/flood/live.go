package main

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// xdpMD is struct xdp_md, the context of an XDP program run: only the
// interface the frames seem to arrive on is set.
type xdpMD struct {
	Data, DataEnd, DataMeta uint32
	IngressIfindex          uint32
	RxQueueIndex            uint32
	EgressIfindex           uint32
}

// xdpTX is the whole sender program: transmit the frame back out of the
// interface it arrived on.
const xdpTX = 3

// liveRun is how many frames one BPF_PROG_RUN call sends: the sources
// rotate between calls, and the time bound is checked between them.
const liveRun = 1 << 16

// sendLive generates the flood inside the kernel: an XDP program that
// returns XDP_TX, run with BPF_PROG_RUN in live-frames mode
// (BPF_F_TEST_XDP_LIVE_FRAMES, Linux ≥ 5.18) as if the frames had arrived
// on ifi. The kernel turns XDP_TX into a redirect out of ifi, so on a veth
// every frame lands on the peer's receive ring without an skb, a copy or a
// syscall per frame: the sender keeps up with any filter on the peer, and
// what the peer cannot take is dropped at its full ring. The peer needs
// NAPI for that (an XDP program attached, or GRO on).
func sendLive(ifi *net.Interface, pkts [][]byte, count int64, dur time.Duration, batch int) (int64, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "flood_tx",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, xdpTX),
			asm.Return(),
		},
	})
	if err != nil {
		return 0, fmt.Errorf("load the sender program: %w", err)
	}
	defer prog.Close()
	var sent int64
	deadline := time.Now().Add(dur)
	for i := 0; sent < count && time.Now().Before(deadline); i++ {
		n := uint32(min(int64(liveRun), count-sent))
		_, err := prog.Run(&ebpf.RunOptions{
			Data:      pkts[i%len(pkts)],
			Context:   xdpMD{DataEnd: uint32(len(pkts[i%len(pkts)])), IngressIfindex: uint32(ifi.Index)},
			Repeat:    n,
			Flags:     unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			BatchSize: uint32(batch),
		})
		if errors.Is(err, ebpf.ErrNotSupported) {
			return sent, fmt.Errorf("live frames need Linux 5.18 or later: %w", err)
		}
		if err != nil {
			return sent, fmt.Errorf("run the sender program on %s: %w", ifi.Name, err)
		}
		sent += int64(n)
	}
	return sent, nil
}
