package nft

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"golang.org/x/sys/unix"
)

// tcpOpts is what a socket's TCP_INFO says of the options its handshake
// agreed: tcpi_options, the window scales each way, the MSS it sends.
type tcpOpts struct {
	options              uint8
	sndWScale, rcvWScale uint8
	sndMSS               uint32
}

// readTCPOpts reads TCP_INFO raw: x/sys's TCPInfo leaves out the byte of
// the two 4-bit window scales.
func readTCPOpts(c net.Conn) (tcpOpts, error) {
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return tcpOpts{}, err
	}
	b := make([]byte, 104)
	n := uint32(len(b))
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
			uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&n)), 0)
	}); err != nil {
		return tcpOpts{}, err
	}
	if errno != 0 {
		return tcpOpts{}, errno
	}
	if n < 20 {
		return tcpOpts{}, fmt.Errorf("TCP_INFO of %d bytes", n)
	}
	return tcpOpts{options: b[5], sndWScale: b[6] & 0xf, rcvWScale: b[6] >> 4,
		sndMSS: binary.NativeEndian.Uint32(b[16:20])}, nil
}

// infoListener hands out the TCP options of every connection it accepts.
type infoListener struct {
	net.Listener
	opts chan tcpOpts
}

func (l infoListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		if o, err := readTCPOpts(c); err == nil {
			select {
			case l.opts <- o:
			default:
			}
		}
	}
	return c, err
}

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"gate.example"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestClientsThroughSynProxy: real clients (Go, curl, openssl s_client)
// reach a TLS listener through synproxy over both families, and the TCP
// options the client got in synproxy's SYN-ACK are those of the
// listener's own socket: timestamps, SACK, the window scale the listener
// announced (synproxy does not translate it: a larger one would make the
// client overrun the listener's window) and the MSS of the interface's
// MTU; the listener got the client's window scale.
func TestClientsThroughSynProxy(t *testing.T) {
	curl := netns.RequireTool(t, "curl", "curl")
	openssl := netns.RequireTool(t, "openssl", "openssl")
	client := netns.New(t, "cloud")
	gns := netns.New(t, "gate")
	netns.Connect(t, client, []string{admittedV4 + "/24", admittedV6 + "/64"}, gns, []string{gateV4 + "/24", gateV6 + "/64"})
	g := newGateIn(t, gns, Config{})
	if err := g.e.Apply(testPolicy(policy.ModeListeners)); err != nil {
		t.Fatal(err)
	}
	l := infoListener{gns.Listen(t, "tcp", fmt.Sprintf(":%d", listenPort)), make(chan tcpOpts, 16)}
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "gatehouse\n") }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}},
	}
	go srv.ServeTLS(l, "", "")
	t.Cleanup(func() { srv.Close() })

	for _, tc := range []struct {
		family, src, dst string
		mss              uint32
	}{
		{"v4", admittedV4, gateV4, 1500 - 40}, {"v6", admittedV6, gateV6, 1500 - 60},
	} {
		url := "https://" + net.JoinHostPort(tc.dst, fmt.Sprint(listenPort)) + "/"
		// Go, with the client socket's options read back (and the
		// listener's of the same connection: the earlier ones are gone).
		for len(l.opts) > 0 {
			<-l.opts
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		raw, err := client.DialContext(ctx, "tcp", "", net.JoinHostPort(tc.dst, fmt.Sprint(listenPort)))
		cancel()
		if err != nil {
			t.Fatalf("%s: Go dial: %v", tc.family, err)
		}
		raw.SetDeadline(time.Now().Add(5 * time.Second))
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
		_, err = io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
		var body []byte
		if err == nil {
			body, err = io.ReadAll(c)
		}
		if err != nil || !strings.Contains(string(body), "gatehouse") {
			t.Fatalf("%s: Go client: %v %q", tc.family, err, body)
		}
		got, err := readTCPOpts(raw)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		var server tcpOpts
		select {
		case server = <-l.opts:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the listener accepted nothing", tc.family)
		}
		const all = 1 | 2 | 4 // TCPI_OPT_TIMESTAMPS, _SACK, _WSCALE
		if got.options&all != all || server.options&all != all {
			t.Errorf("%s: options client %#x, listener %#x: want timestamps, SACK and window scaling on both", tc.family, got.options, server.options)
		}
		if got.sndWScale != server.rcvWScale || got.rcvWScale != server.sndWScale {
			t.Errorf("%s: window scale client send %d / receive %d, listener receive %d / send %d: want them to match",
				tc.family, got.sndWScale, got.rcvWScale, server.rcvWScale, server.sndWScale)
		}
		if want := tc.mss - 12; got.sndMSS != want { // 12: the timestamp option
			t.Errorf("%s: client sends segments of %d bytes, want %d", tc.family, got.sndMSS, want)
		}
		t.Logf("%s: client %+v, listener %+v", tc.family, got, server)

		// curl and openssl s_client.
		if out, err := client.Command(curl, "-sSk", "--max-time", "10", url).CombinedOutput(); err != nil || !strings.Contains(string(out), "gatehouse") {
			t.Errorf("%s: curl: %v\n%s", tc.family, err, out)
		}
		cmd := client.Command(openssl, "s_client", "-ign_eof", "-connect", net.JoinHostPort(tc.dst, fmt.Sprint(listenPort)), "-servername", "gate.example")
		cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\n\r\n")
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "gatehouse") {
			t.Errorf("%s: openssl s_client: %v\n%s", tc.family, err, out)
		}
	}
	if c := g.counters(t); c[ruleSynProxy] == 0 {
		t.Errorf("no connection went through synproxy: %v", c)
	}
}
