package telnet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

const stepTimeout = 5 * time.Second

func testPeer() certs.Peer {
	return certs.Peer{Tenant: "acme", FingerprintSHA256: "ab12", Source: netip.MustParseAddrPort("192.0.2.10:40000")}
}

// TestTranscripts replays every golden transcript through a Handler between
// a scripted client and a scripted host over loopback TCP.
func TestTranscripts(t *testing.T) {
	for _, tr := range loadTranscripts(t) {
		t.Run(tr.name, func(t *testing.T) {
			replay(t, tr)
		})
	}
}

func replay(t *testing.T, tr transcript) {
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	rt := tr.route
	rt.Backend = hostLn.Addr().String()
	ss := NewSessions()
	h, err := New(Config{Listener: "mf", Protocol: tr.proto, Routes: []policy.Route{rt}, Sessions: ss})
	if err != nil {
		t.Fatal(err)
	}
	cli, srv := testkit.TCPPair(t)
	served := make(chan error, 1)
	go func() { served <- h.Serve(context.Background(), srv, testPeer()) }()
	hostLn.(*net.TCPListener).SetDeadline(time.Now().Add(stepTimeout))
	host, err := hostLn.Accept()
	if err != nil {
		t.Fatalf("proxy did not connect to the host: %v", err)
	}
	defer host.Close()

	for _, st := range tr.steps {
		c := cli
		if st.who == "host" {
			c = host
		}
		switch {
		case !st.expect:
			if _, err := c.Write(st.data); err != nil {
				t.Fatalf("line %d: %s write: %v", st.line, st.who, err)
			}
		case st.eof:
			c.SetReadDeadline(time.Now().Add(stepTimeout))
			b, err := io.ReadAll(c)
			if len(b) > 0 || err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("line %d: %s wanted the end of the stream, got % x, %v", st.line, st.who, b, err)
			}
		default:
			c.SetReadDeadline(time.Now().Add(stepTimeout))
			got := make([]byte, len(st.data))
			n, err := io.ReadFull(c, got)
			if err != nil || !bytes.Equal(got, st.data) {
				t.Fatalf("line %d: %s read\n got % x (%v)\nwant % x", st.line, st.who, got[:n], err, st.data)
			}
		}
	}
	cli.Close()
	select {
	case <-served:
	case <-time.After(stepTimeout):
		t.Fatal("session did not end after the client closed")
	}
	if got := testutil.ToFloat64(ss.total.WithLabelValues("mf", "acme", "default", tr.result)); got != 1 {
		t.Errorf("sessions_total{result=%q} = %v, want 1", tr.result, got)
	}
	if n := ss.Active("mf", "acme"); n != 0 {
		t.Errorf("%d sessions still counted active", n)
	}
}

// offline runs a transcript's writes through both directions of a session
// without sockets, cutting each write wherever cut says (by offset in the
// whole script). It returns what each side would receive and the first
// error.
func offline(t testing.TB, tr transcript, cut func(off int) bool) (toClient, toHost []byte, err error) {
	t.Helper()
	rt := tr.route
	rt.Backend = "192.0.2.1:23"
	h, herr := New(Config{Listener: "mf", Protocol: tr.proto, Routes: []policy.Route{rt}})
	if herr != nil {
		t.Fatal(herr)
	}
	s := newSession(h, h.routes[rt.Env()], testPeer(), nil, nil, time.Now())
	dirs := map[string]*direction{
		"client": {s: s, fromClient: true},
		"host":   {s: s},
	}
	off := 0
	for _, st := range tr.steps {
		if st.expect {
			continue
		}
		d := dirs[st.who]
		start := 0
		for i := range st.data {
			if i+1 == len(st.data) || cut(off+i+1) {
				d.out, d.reply = nil, nil
				err = d.p.Feed(st.data[start:i+1], d.token)
				if d.fromClient {
					toHost, toClient = append(toHost, d.out...), append(toClient, d.reply...)
				} else {
					toClient, toHost = append(toClient, d.out...), append(toHost, d.reply...)
				}
				if err != nil {
					return toClient, toHost, err
				}
				start = i + 1
			}
		}
		off += len(st.data)
	}
	return toClient, toHost, nil
}

func expected(tr transcript) (toClient, toHost []byte, total int) {
	for _, st := range tr.steps {
		switch {
		case !st.expect:
			total += len(st.data)
		case st.who == "client":
			toClient = append(toClient, st.data...)
		default:
			toHost = append(toHost, st.data...)
		}
	}
	return toClient, toHost, total
}

func resultOf(err error) string {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, ErrRefused):
		return ResultRefused
	case errors.Is(err, ErrTooManyNego), errors.Is(err, ErrSubTooLong):
		return ResultLimit
	}
	return ResultProtocol
}

// TestFragmentation cuts every transcript at every byte boundary, and into
// single bytes, and wants the same bytes on both sides and the same outcome
// as the transcript says.
func TestFragmentation(t *testing.T) {
	for _, tr := range loadTranscripts(t) {
		t.Run(tr.name, func(t *testing.T) {
			wantC, wantH, total := expected(tr)
			check := func(what string, cut func(int) bool) {
				c, h, err := offline(t, tr, cut)
				if !bytes.Equal(c, wantC) || !bytes.Equal(h, wantH) || resultOf(err) != tr.result {
					t.Fatalf("%s:\nclient got  % x\nclient want % x\nhost got  % x\nhost want % x\nerr %v, want result %s",
						what, c, wantC, h, wantH, err, tr.result)
				}
			}
			check("whole writes", func(int) bool { return false })
			check("single bytes", func(int) bool { return true })
			for k := 1; k < total; k++ {
				check("cut at "+itoa(k), func(off int) bool { return off == k })
			}
		})
	}
}

func itoa(i int) string {
	return string(rune('0'+i/100%10)) + string(rune('0'+i/10%10)) + string(rune('0'+i%10))
}
