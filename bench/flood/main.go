// Command flood sends a bounded flood of TCP SYN frames out of one
// interface, for the drop-rate comparison of bench/run.sh. By default it
// generates them inside the kernel (-mode live: an XDP program run with
// BPF_PROG_RUN in live-frames mode, transmitting out of the interface), so
// the flood is not bound by its sender; -mode packet sends from user space
// with an AF_PACKET socket, the old sender, for comparison. It stops after
// -count frames or -dur, whichever comes first, and prints what it sent
// and the CPU it used.
//
// It refuses addresses outside the documentation ranges: run.sh points it
// at a veth into a throwaway namespace, never at a real network.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"
)

const (
	ethPIP = 0x0800
	frames = 64 // distinct sources rotated through
)

func main() {
	ifname := flag.String("if", "", "interface to send on")
	dstMAC := flag.String("dstmac", "", "destination MAC (the receiving veth)")
	src := flag.String("src", "198.51.100.0", "first source address; frames use the next 64")
	dst := flag.String("dst", "192.0.2.1", "destination address")
	port := flag.Int("port", 443, "destination TCP port")
	count := flag.Int64("count", 2_000_000, "frames to send at most")
	dur := flag.Duration("dur", 10*time.Second, "time to send at most")
	mode := flag.String("mode", "live", "live (in-kernel XDP sender) or packet (AF_PACKET)")
	batch := flag.Int("batch", 64, "frames per sendmmsg call (packet) or per kernel batch (live)")
	flag.Parse()
	if err := run(*mode, *ifname, *dstMAC, *src, *dst, *port, *count, *dur, *batch); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
		os.Exit(1)
	}
}

func documentation(a netip.Addr) bool {
	for _, p := range []string{"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"} {
		if netip.MustParsePrefix(p).Contains(a) {
			return true
		}
	}
	return false
}

func run(mode, ifname, dstMAC, srcS, dstS string, port int, count int64, dur time.Duration, batch int) error {
	send := map[string]func(*net.Interface, [][]byte, int64, time.Duration, int) (int64, error){
		"live": sendLive, "packet": sendPacket,
	}[mode]
	if send == nil {
		return fmt.Errorf("bad -mode %q: live or packet", mode)
	}
	if count <= 0 || dur <= 0 || batch <= 0 || batch > 256 {
		return fmt.Errorf("-count and -dur must be positive, -batch within 1…256")
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(dstMAC)
	if err != nil || len(mac) != 6 {
		return fmt.Errorf("bad -dstmac %q", dstMAC)
	}
	srcA, err1 := netip.ParseAddr(srcS)
	dstA, err2 := netip.ParseAddr(dstS)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	if !srcA.Is4() || !dstA.Is4() || !documentation(dstA) {
		return fmt.Errorf("addresses must be IPv4 documentation addresses")
	}
	var pkts [][]byte
	a := srcA
	for i := range frames {
		a = a.Next()
		if !documentation(a) {
			return fmt.Errorf("source %s leaves the documentation ranges", a)
		}
		pkts = append(pkts, syn(mac, ifi.HardwareAddr, a, dstA, uint16(20000+i), uint16(port), uint32(i)*7919))
	}
	start := time.Now()
	sent, err := send(ifi, pkts, count, dur, batch)
	elapsed := time.Since(start).Seconds()
	if err != nil && sent == 0 {
		return err
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("mode=%s sent=%d secs=%.3f pps=%.0f utime=%.3f stime=%.3f\n", mode, sent, elapsed, float64(sent)/elapsed,
		float64(ru.Utime.Nano())/1e9, float64(ru.Stime.Nano())/1e9)
	return err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// syn builds an Ethernet/IPv4/TCP SYN padded to the 60-byte minimum.
func syn(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	b := make([]byte, 60)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:], ethPIP)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	binary.BigEndian.PutUint16(ip[4:], sport)
	ip[8] = 64
	ip[9] = syscall.IPPROTO_TCP
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	tcp := b[34:54]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	var pseudo uint32
	for i := 0; i < 4; i += 2 {
		pseudo += uint32(binary.BigEndian.Uint16(s4[i:])) + uint32(binary.BigEndian.Uint16(d4[i:]))
	}
	pseudo += syscall.IPPROTO_TCP + 20
	binary.BigEndian.PutUint16(tcp[16:], checksum(tcp, pseudo))
	return b
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
