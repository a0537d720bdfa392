package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// switcher is a backend that records every request it reads and answers
// any Upgrade with 101 for the protocol asked, then echoes each line of the
// tunnel: the most willing backend an attacker could hope for.
type switcher struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func newSwitcher(t *testing.T) *switcher {
	s := &switcher{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				s.serve(c)
			}()
		}
	}()
	return s
}

func (s *switcher) record(line string) {
	s.mu.Lock()
	s.seen = append(s.seen, line)
	s.mu.Unlock()
}

func (s *switcher) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

func (s *switcher) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, r.Body)
		s.record(r.Method + " " + r.RequestURI + " upgrade=" + r.Header.Get("Upgrade"))
		if up := r.Header.Get("Upgrade"); up != "" {
			fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", up)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				s.record("tunnel: " + strings.TrimSpace(line))
				io.WriteString(c, "echo:"+line)
			}
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
}

// wsHandshake is an RFC 6455 opening handshake's head after the request
// line, with extra fields.
func wsHandshake(extra string) string {
	return "Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n"
}

// TestUpgradeOnlyWebSocketWhereAllowed: a tunnel, once a backend answers
// 101, carries whatever the client sends past every check, so an upgrade
// passes only as a WebSocket handshake on an https route that allows it.
// On a soap listener the review got 101 for "Upgrade: foo" on a POST with a
// valid envelope and then sent an uninspected <DeleteAll/> through.
// Every refusal answers before any backend sees the request, with the
// reason in the access log, and ends the connection.
func TestUpgradeOnlyWebSocketWhereAllowed(t *testing.T) {
	be := newSwitcher(t)
	web := listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Path: "/ws", Backend: "http://" + be.addr, WebSocket: true},
		policy.Route{Tenant: "acme", Path: "/api", Backend: "http://" + be.addr})
	web.Port = freePort(t)
	h := newHarness(t, testLimits(), web, listener("services", policy.ProtoSOAP,
		policy.Route{Tenant: "acme", Backend: "http://" + be.addr, SOAPActions: []string{"urn:acme:Get"}}))
	env := soapEnvelope("Get", "urn:acme")
	soap := fmt.Sprintf("POST /svc HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\nContent-Type: text/xml\r\nSOAPAction: \"urn:acme:Get\"\r\nContent-Length: %d\r\n\r\n%s", len(env), env)
	tests := []struct {
		name, listener, req string
		status              int
		reason              string
	}{
		{"soap listener", "services", soap, 400, "bad request: upgrade on a soap listener"},
		{"soap listener, websocket", "services", "GET /svc HTTP/1.1\r\n" + wsHandshake(""), 400, "bad request: upgrade on a soap listener"},
		{"route without websocket", "web", "GET /api HTTP/1.1\r\n" + wsHandshake(""), 403, "forbidden: WebSocket not enabled on the route"},
		{"another protocol", "web", "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n", 400, "bad request: upgrade other than a WebSocket handshake"},
		{"two protocols", "web", "GET /ws HTTP/1.1\r\n" + strings.Replace(wsHandshake(""), "Upgrade: websocket", "Upgrade: websocket, foo", 1), 400, "bad request: upgrade other than a WebSocket handshake"},
		{"POST", "web", "POST /ws HTTP/1.1\r\n" + wsHandshake("Content-Length: 0\r\n"), 400, "bad request: upgrade other than a WebSocket handshake"},
		{"with a body", "web", "GET /ws HTTP/1.1\r\n" + wsHandshake("Content-Length: 5\r\n") + "hello", 400, "bad request: upgrade other than a WebSocket handshake"},
		{"no key", "web", "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n", 400, "bad request: upgrade other than a WebSocket handshake"},
		{"short key", "web", "GET /ws HTTP/1.1\r\n" + strings.Replace(wsHandshake(""), "dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=", 1), 400, "bad request: upgrade other than a WebSocket handshake"},
		{"old version", "web", "GET /ws HTTP/1.1\r\n" + strings.Replace(wsHandshake(""), "Version: 13", "Version: 8", 1), 400, "bad request: upgrade other than a WebSocket handshake"},
		{"no Connection: upgrade", "web", "GET /ws HTTP/1.1\r\n" + strings.Replace(wsHandshake(""), "Connection: Upgrade", "Connection: keep-alive", 1), 400, "bad request: upgrade other than a WebSocket handshake"},
		{"Connection: upgrade alone", "web", "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\r\n", 400, "bad request: upgrade other than a WebSocket handshake"},
		{"HTTP/1.0", "web", "GET /ws HTTP/1.0\r\n" + wsHandshake(""), 400, "bad request: upgrade other than a WebSocket handshake"},
		{"h2c", "web", "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", 400, "bad request: h2c upgrade"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(be.requests())
			c := h.rawTLS(h.pki.acme, tc.listener)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, tc.req)
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			// Nothing follows on the connection: the client cannot go on to
			// send what a tunnel would have carried.
			io.WriteString(c, "POST /svc HTTP/1.1 <DeleteAll/> uninspected\n")
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Errorf("the connection went on after the refusal: %q", rest)
			}
			if got := be.requests()[before:]; len(got) != 0 {
				t.Errorf("the backend saw %q", got)
			}
			if h.access.WaitLines(`"reason":"`+tc.reason+`"`) == nil {
				t.Errorf("no access log line with reason %q", tc.reason)
			}
		})
	}

	// A WebSocket handshake on the route that allows it opens the tunnel.
	c := h.rawTLS(h.pki.acme, "web")
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET /ws HTTP/1.1\r\n"+wsHandshake(""))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("WebSocket handshake on its route: %v %v, want 101", resp, err)
	}
	io.WriteString(c, "hello\n")
	if line, err := br.ReadString('\n'); line != "echo:hello\n" {
		t.Errorf("through the tunnel: %q %v", line, err)
	}
}
