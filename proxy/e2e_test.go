package proxy_test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/test/netns"
)

// TestCurlWithClientCertificate drives the proxy with curl --cert, the way
// an operator checks a listener by hand.
func TestCurlWithClientCertificate(t *testing.T) {
	curl := netns.RequireTool(t, "curl", "curl")
	b := newBackend(t, "a")
	h := newHarness(t, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Host: "a.example", Path: "/orders", Backend: b.url()}))
	dir := t.TempDir()
	cert, key := writePEM(t, dir, "acme", h.pki.acme)
	ca := writeCAPEM(t, dir, "server-ca", h.pki.serverCA)
	_, port, _ := net.SplitHostPort(h.addr("web"))
	run := func(args ...string) (string, error) {
		base := []string{"--silent", "--show-error", "--max-time", "10", "--cacert", ca,
			"--resolve", "a.example:" + port + ":127.0.0.1"}
		out, err := exec.Command(curl, append(base, args...)...).CombinedOutput()
		return string(out), err
	}
	url := "https://a.example:" + port + "/orders/42?x=1"
	out, err := run("--cert", cert, "--key", key, "-H", "X-Gatehouse-Tenant: globex", url)
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	var e echo
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		t.Fatalf("curl output %q: %v", out, err)
	}
	if e.Path != "/orders/42" || e.Header.Get("X-Gatehouse-Tenant") != "acme" ||
		e.Header.Get("X-Client-Cert-Fingerprint") != fingerprint(h.pki.acme) {
		t.Errorf("backend saw path %q tenant %q fingerprint %q", e.Path,
			e.Header.Get("X-Gatehouse-Tenant"), e.Header.Get("X-Client-Cert-Fingerprint"))
	}
	out, err = run("--cert", cert, "--key", key, "-o", "/dev/null", "-w", "%{http_code}", "https://a.example:"+port+"/admin")
	if err != nil || out != "403" {
		t.Errorf("curl to an unrouted path: %q %v, want 403", out, err)
	}
	if out, err := run(url); err == nil {
		t.Errorf("curl without a client certificate succeeded: %s", out)
	}
}

// serveTCP runs serve on every connection to a loopback listener and
// returns its address.
func serveTCP(t testing.TB, serve func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln.Addr().String()
}

func TestTCPRelay(t *testing.T) {
	echo := serveTCP(t, func(c net.Conn) {
		// Echo until the client half-closes, then say goodbye: only
		// works if the relay passes the FIN on and keeps reading.
		io.Copy(c, c)
		io.WriteString(c, "bye\n")
		c.Close()
	})
	h := newHarness(t, testLimits(), listener("raw", policy.ProtoTCP,
		policy.Route{Tenant: "acme", Backend: echo}))
	c := h.rawTLS(h.pki.acme, "raw")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "hello\n")
	br := bufio.NewReader(c)
	if line, _ := br.ReadString('\n'); line != "hello\n" {
		t.Fatalf("echo %q", line)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "bye\n" {
		t.Errorf("after half-close got %q, want bye", rest)
	}
	// A tenant without a tcp route gets nothing.
	g := h.rawTLS(h.pki.globex, "raw")
	g.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(g, "hello\n")
	if b, _ := io.ReadAll(g); len(b) != 0 {
		t.Errorf("globex without a route got %q", b)
	}
	if !strings.Contains(h.addr("raw"), "127.0.0.1") {
		t.Error("tcp listener not on loopback")
	}
}

func TestTCPRelayToTLSBackend(t *testing.T) {
	internalCA := newCA(t, "internal ca")
	dir := t.TempDir()
	caFile := writeCAPEM(t, dir, "internal-ca", internalCA)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{internalCA.issue(t, "backend", true, "127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	h := newHarness(t, testLimits(), listener("raw", policy.ProtoTCP,
		policy.Route{Tenant: "acme", Backend: ln.Addr().String(), BackendTLS: true, BackendCA: caFile},
		policy.Route{Tenant: "globex", Backend: ln.Addr().String(), BackendTLS: true})) // system roots: must fail
	c := h.rawTLS(h.pki.acme, "raw")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "over tls\n")
	if line, _ := bufio.NewReader(c).ReadString('\n'); line != "over tls\n" {
		t.Errorf("echo over a TLS backend: %q", line)
	}
	g := h.rawTLS(h.pki.globex, "raw")
	g.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(g, "x\n")
	if b, _ := io.ReadAll(g); len(b) != 0 {
		t.Errorf("unverified TLS backend relayed %q", b)
	}
}

// TestReloadEndsSessionsOfChangedRoutes: a tcp session lives on the route
// it was admitted on. A reload that moves acme's route ends acme's session;
// globex, whose route stayed, keeps its session; a new acme session goes to
// the new backend.
func TestReloadEndsSessionsOfChangedRoutes(t *testing.T) {
	echo := func(name string) string {
		return serveTCP(t, func(c net.Conn) {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				io.WriteString(c, name+":"+line)
			}
		})
	}
	one, two, three := echo("one"), echo("two"), echo("three")
	h := newHarness(t, testLimits(), listener("raw", policy.ProtoTCP,
		policy.Route{Tenant: "acme", Backend: one},
		policy.Route{Tenant: "globex", Backend: two}))
	say := func(c *tls.Conn, br *bufio.Reader) (string, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "hi\n"); err != nil {
			return "", err
		}
		return br.ReadString('\n')
	}
	a, g := h.rawTLS(h.pki.acme, "raw"), h.rawTLS(h.pki.globex, "raw")
	ar, gr := bufio.NewReader(a), bufio.NewReader(g)
	if got, err := say(a, ar); got != "one:hi\n" {
		t.Fatalf("acme before the reload: %q %v", got, err)
	}
	if got, err := say(g, gr); got != "two:hi\n" {
		t.Fatalf("globex before the reload: %q %v", got, err)
	}
	if err := h.srv.Apply(&policy.Policy{Generation: 2, Listeners: []policy.Listener{listener("raw", policy.ProtoTCP,
		policy.Route{Tenant: "acme", Backend: three},
		policy.Route{Tenant: "globex", Backend: two})}}); err != nil {
		t.Fatal(err)
	}
	if got, err := say(a, ar); err == nil {
		t.Errorf("acme's session on its old route still answers after the reload: %q", got)
	}
	if got, err := say(g, gr); got != "two:hi\n" {
		t.Errorf("globex's unchanged route lost its session: %q %v", got, err)
	}
	a2 := h.rawTLS(h.pki.acme, "raw")
	if got, err := say(a2, bufio.NewReader(a2)); got != "three:hi\n" {
		t.Errorf("new acme session: %q %v, want the new backend", got, err)
	}
}

// TestRefusedHandshakeIsLogged: a certificate no tenant trusts is refused
// in the handshake, and the proxy's log names the source and the check.
func TestRefusedHandshakeIsLogged(t *testing.T) {
	h := newHarness(t, testLimits(), listener("raw", policy.ProtoTCP, policy.Route{Tenant: "acme", Backend: "127.0.0.1:9"}))
	c, err := tls.Dial("tcp", h.addr("raw"), h.pki.clientTLS(h.pki.rogue, "localhost", "http/1.1"))
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1)) // TLS 1.3: the refusal arrives after the client's Finished
		c.Close()
	}
	lines := h.logs.WaitLines("TLS handshake refused")
	var line string
	for _, l := range lines {
		if strings.Contains(l, "TLS handshake refused") {
			line = l
		}
	}
	if !strings.Contains(line, "source=127.0.0.1:") || !strings.Contains(line, "listener=raw") || !strings.Contains(line, "certificate") {
		t.Errorf("refusal log line %q: want listener, source and cause", line)
	}
}
