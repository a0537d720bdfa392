package proxy_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestHeadEndedPastTheLimit: over HTTP/1.1 a request head that runs more
// than 4 KiB past max_header_size is answered 431 as it arrives, finished
// or not, and the connection ends: the server no longer reads (and holds)
// up to twice the limit, which only HTTP/2 needs. The refusal is logged
// with its reason, and no backend sees anything.
func TestHeadEndedPastTheLimit(t *testing.T) {
	b := newBackend(t, "a")
	l := listener("web", policy.ProtoHTTPS, policy.Route{Tenant: "acme", Backend: b.url()})
	l.Limits = policyLimits() // max_header_size 16 KiB
	h := newHarness(t, testLimits(), l)
	for _, head := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 21<<10), // never finished
		"GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-Many: "+strings.Repeat("m", 1000)+"\r\n", 30),
	} {
		c := h.rawTLS(h.pki.acme, "web")
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go io.WriteString(c, head) // may block on a full window once refused
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("head of %d bytes: %v, want 431", len(head), err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !resp.Close {
			t.Errorf("head of %d bytes: status %d close %v, want 431 and close", len(head), resp.StatusCode, resp.Close)
		}
	}
	if got := b.hits.Load(); got != 0 {
		t.Errorf("backend saw %d requests", got)
	}
	if h.logs.WaitLines("request head over max_header_size") == nil {
		t.Error("no log line with the reason")
	}
}
