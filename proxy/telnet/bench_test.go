package telnet

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// benchProxy is a TLS listener whose connections the handler serves, the
// way proxy/ dispatches a tn3270 listener.
func benchProxy(b *testing.B, pki *testPKI, h *Handler) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	var cur atomic.Pointer[Handler]
	cur.Store(h)
	go serveTLS(ln, pki, &cur)
	return ln
}

// openSession dials the proxy with the tenant certificate and runs a TN3270
// negotiation up to the first screen; it returns the client and host ends.
func openSession(b testing.TB, cfg *tls.Config, proxy string, hostLn net.Listener) (net.Conn, net.Conn) {
	cli, err := tls.Dial("tcp", proxy, cfg)
	if err != nil {
		b.Fatal(err)
	}
	host, err := hostLn.Accept()
	if err != nil {
		b.Fatal(err)
	}
	steps := []struct {
		from, to net.Conn
		tok      string
	}{
		{host, cli, `IAC DO TTYPE IAC SB TTYPE SEND IAC SE`},
		{cli, host, `IAC WILL TTYPE IAC SB TTYPE IS "IBM-3278-2-E@ACMELU01" IAC SE`},
		{host, cli, `IAC WILL BINARY IAC DO BINARY IAC WILL EOR IAC DO EOR 0xF5 0xC3 "SCREEN" IAC EOR`},
	}
	for _, s := range steps {
		msg := mustTokens(b, s.tok)
		if _, err := s.from.Write(msg); err != nil {
			b.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(s.to, got); err != nil {
			b.Fatal(err)
		}
	}
	return cli, host
}

func benchRig(b *testing.B) (*testPKI, net.Listener, net.Listener) {
	pki := newPKI(b)
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { hostLn.Close() })
	h, err := New(Config{Listener: "mf", Protocol: policy.ProtoTN3270, Routes: []policy.Route{{
		Tenant: "acme", Backend: hostLn.Addr().String(), LUNames: []string{"ACMELU0*"}}}})
	if err != nil {
		b.Fatal(err)
	}
	return pki, benchProxy(b, pki, h), hostLn
}

// BenchmarkThroughput streams 3270 data from a TLS client through the
// handler (TLS decrypt, Telnet parse, write) to a plain host. Client, proxy
// and host share the process: MB/cpu-s divides the bytes by the CPU time of
// all three, so the proxy's own rate per core is higher.
func BenchmarkThroughput(b *testing.B) {
	pki, proxy, hostLn := benchRig(b)
	cli, host := openSession(b, pki.clientTLS(), proxy.Addr().String(), hostLn)
	benchStream(b, cli, host)
}

// BenchmarkThroughputRelay is the same stream through a plain TLS-to-TCP
// copy with proxy/relay's 32 KiB buffer and no Telnet parsing, the floor
// the handler is measured against.
func BenchmarkThroughputRelay(b *testing.B) {
	pki := newPKI(b)
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer hostLn.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		tc := tls.Server(c, pki.serverTLS)
		hc, err := net.Dial("tcp", hostLn.Addr().String())
		if err != nil {
			c.Close()
			return
		}
		io.CopyBuffer(hc, struct{ io.Reader }{tc}, make([]byte, 32<<10)) // as proxy/relay
		hc.Close()
		tc.Close()
	}()
	cli, err := tls.Dial("tcp", ln.Addr().String(), pki.clientTLS())
	if err != nil {
		b.Fatal(err)
	}
	host, err := hostLn.Accept()
	if err != nil {
		b.Fatal(err)
	}
	benchStream(b, cli, host)
}

func benchStream(b *testing.B, cli, host net.Conn) {
	defer cli.Close()
	defer host.Close()
	chunk := make([]byte, 64<<10)
	rand.Read(chunk)
	// Random data holds 0xFF bytes; double them as a client would.
	chunk = appendEscaped(nil, chunk)
	received := make(chan int64)
	go func() {
		n, _ := io.Copy(io.Discard, host)
		received <- n
	}()
	b.SetBytes(int64(len(chunk)))
	cpu0 := cpuTime()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := cli.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	cli.Close()
	n := <-received
	el := time.Since(start)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if n != int64(b.N*len(chunk)) {
		b.Fatalf("host got %d bytes, want %d", n, b.N*len(chunk))
	}
	b.ReportMetric(float64(n)/el.Seconds()/1e6, "MB/s-through")
	b.ReportMetric(float64(n)/cpu.Seconds()/1e6, "MB/cpu-s")
}

// cpuTime is the CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIdleSession measures the memory an idle terminal session holds
// on the proxy's side: the server TLS connection, the session with its
// goroutines and buffers, and the host connection. The clients and the host
// run in a child process (TestIdleSessionHelper), so the heap and stacks
// measured here, after GC, are the proxy's alone.
func BenchmarkIdleSession(b *testing.B) {
	const sessions = 1000
	pki := newPKI(b)
	var h atomic.Pointer[Handler]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	serving := false
	for range b.N {
		cmd := exec.Command(os.Args[0], "-test.run=^TestIdleSessionHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), "GATEHOUSE_TELNET_HELPER=1",
			"HELPER_PROXY="+ln.Addr().String(), "HELPER_SESSIONS="+strconv.Itoa(sessions),
			"HELPER_CA="+pki.ca.CertFile, "HELPER_CERT="+pki.client.CertFile, "HELPER_KEY="+pki.client.KeyFile)
		cmd.Stderr = os.Stderr
		in, _ := cmd.StdinPipe()
		outPipe, _ := cmd.StdoutPipe()
		out := bufio.NewReader(outPipe)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		line := func() string {
			l, err := out.ReadString('\n')
			if err != nil {
				b.Fatalf("helper: %v", err)
			}
			return strings.TrimSpace(l)
		}
		hostAddr, ok := strings.CutPrefix(line(), "host ")
		if !ok {
			b.Fatal("helper did not report its host")
		}
		hd, err := New(Config{Listener: "mf", Protocol: policy.ProtoTN3270, Routes: []policy.Route{{
			Tenant: "acme", Backend: hostAddr, LUNames: []string{"ACMELU0*"}}}})
		if err != nil {
			b.Fatal(err)
		}
		h.Store(hd)
		before := memInUse()
		if !serving {
			serving = true
			go serveTLS(ln, pki, &h)
		}
		fmt.Fprintln(in, "go")
		if l := line(); l != "ready" {
			b.Fatalf("helper: %q", l)
		}
		after := memInUse()
		if n := hd.sessions.Active("mf", "acme"); n != sessions {
			b.Fatalf("%d sessions open, want %d", n, sessions)
		}
		b.ReportMetric(float64(after-before)/sessions/1024, "KiB/session")
		in.Close()
		cmd.Wait()
	}
}

// serveTLS accepts until ln closes, serving with the current handler.
func serveTLS(ln net.Listener, pki *testPKI, h *atomic.Pointer[Handler]) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			tc := tls.Server(c, pki.serverTLS)
			if tc.Handshake() != nil {
				c.Close()
				return
			}
			peer, err := admitAcme(tc.ConnectionState())
			if err != nil {
				c.Close()
				return
			}
			h.Load().Serve(context.Background(), tc, peer)
		}()
	}
}

// TestIdleSessionHelper is BenchmarkIdleSession's child process: it hosts
// the TN3270 host, opens the client sessions and holds them idle.
func TestIdleSessionHelper(t *testing.T) {
	if os.Getenv("GATEHOUSE_TELNET_HELPER") != "1" {
		t.Skip("child process of BenchmarkIdleSession")
	}
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("host", hostLn.Addr())
	in := bufio.NewReader(os.Stdin)
	if l, _ := in.ReadString('\n'); strings.TrimSpace(l) != "go" {
		t.Fatal("no go")
	}
	ca, _ := os.ReadFile(os.Getenv("HELPER_CA"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	kp, err := tls.LoadX509KeyPair(os.Getenv("HELPER_CERT"), os.Getenv("HELPER_KEY"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{kp}}
	n, _ := strconv.Atoi(os.Getenv("HELPER_SESSIONS"))
	var conns []net.Conn
	for range n {
		c, h := openSession(t, cfg, os.Getenv("HELPER_PROXY"), hostLn)
		conns = append(conns, c, h)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, in)
	for _, c := range conns {
		c.Close()
	}
}

func memInUse() uint64 {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}
