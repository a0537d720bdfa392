package relay

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestDialBackendControl: DescriptorsConfig.Control judges every backend
// dial before the connect, on the address dialled: a refusal reaches no
// listener, an allowed dial connects.
func TestDialBackendControl(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	errNo := errors.New("not allowed")
	var seen string
	allow := ""
	fds := NewDescriptors(DescriptorsConfig{Control: func(network, address string, _ syscall.RawConn) error {
		seen = address
		if address != allow {
			return errNo
		}
		return nil
	}})
	defer fds.Close()
	addr := ln.Addr().String()
	if _, err := DialBackend(context.Background(), fds, addr, nil, 5*time.Second); !errors.Is(err, errNo) {
		t.Fatalf("refused dial: %v, want the Control's error", err)
	}
	if seen != addr {
		t.Errorf("Control saw %q, want %q", seen, addr)
	}
	select {
	case <-accepted:
		t.Fatal("a refused dial reached the listener")
	case <-time.After(50 * time.Millisecond):
	}
	allow = addr
	c, err := DialBackend(context.Background(), fds, addr, nil, 5*time.Second)
	if err != nil {
		t.Fatalf("allowed dial: %v", err)
	}
	c.Close()
	<-accepted
}
