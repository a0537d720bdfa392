package main

import (
	"fmt"
	"net"
	"syscall"
	"time"
	"unsafe"
)

const (
	sysSendmmsg       = 307 // x86-64
	packetQdiscBypass = 20
)

// sendPacket sends the frames from user space with an AF_PACKET socket
// (qdisc bypassed, sendmmsg batches), walking them in order. Its rate is
// the sender's own limit (skb, copy, syscall), below what an XDP filter
// drops: it stays for comparison with the in-kernel sender.
func sendPacket(ifi *net.Interface, pkts [][]byte, count int64, dur time.Duration, batch int) (int64, error) {
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, 0) // protocol 0: send only
	if err != nil {
		return 0, fmt.Errorf("packet socket: %w", err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(ethPIP), Ifindex: ifi.Index}); err != nil {
		return 0, fmt.Errorf("bind %s: %w", ifi.Name, err)
	}
	if err := syscall.SetsockoptInt(fd, syscall.SOL_PACKET, packetQdiscBypass, 1); err != nil {
		return 0, fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
	}

	type mmsghdr struct {
		hdr syscall.Msghdr
		n   uint32
		_   [4]byte
	}
	iov := make([]syscall.Iovec, len(pkts))
	for i, p := range pkts {
		iov[i].Base = &p[0]
		iov[i].SetLen(len(p))
	}
	msgs := make([]mmsghdr, batch)
	var sent int64
	deadline := time.Now().Add(dur)
	next := 0
	for calls := 0; sent < count; calls++ {
		if calls%64 == 0 && time.Now().After(deadline) {
			break
		}
		n := min(int64(batch), count-sent)
		for i := range n {
			msgs[i].hdr = syscall.Msghdr{Iov: &iov[(next+int(i))%len(pkts)], Iovlen: 1}
		}
		r, _, e := syscall.Syscall6(sysSendmmsg, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(n), 0, 0, 0)
		if e != 0 {
			if e == syscall.ENOBUFS || e == syscall.EAGAIN || e == syscall.EINTR {
				continue
			}
			return sent, fmt.Errorf("sendmmsg: %w", e)
		}
		sent += int64(r)
		next = (next + int(r)) % len(pkts)
	}
	return sent, nil
}
