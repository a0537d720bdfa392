package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/test/netns"
	"github.com/gatehouse-dmz/gatehouse/test/tn3270host"
)

// TestConnectorGateway runs the pair end to end in namespaces: a tenant's
// curl reaches an internal backend through gateway → tunnel → connector
// although the enterprise's firewall lets nothing in; and each abuse is
// refused.
func TestConnectorGateway(t *testing.T) {
	tt := newTunnelTopo(t)

	t.Run("curl reaches the internal backend down the tunnel", func(t *testing.T) {
		code, body := tt.curl(t, "acme", "/orders")
		if code != 200 {
			t.Fatalf("status %d: %s\ngateway:\n%s\nconnector:\n%s", code, body, tt.gateway.out.String(), tt.connectors["acme"].out.String())
		}
		// The connector's proxy names the original client: tenant and
		// source come from the stream header, proved by the gateway.
		if want := "backend " + tunAcme + ": tenant acme, client " + tunCloud; body != want {
			t.Errorf("body %q, want %q", body, want)
		}
		if v := tt.gatewayMetric(t, `gatehouse_tunnel_streams_total{result="opened",role="gateway",tenant="acme"}`); v < 1 {
			t.Errorf("gateway streams opened for acme = %v", v)
		}
	})

	t.Run("nothing inside is reachable from the cloud side", func(t *testing.T) {
		// Control: from inside, the backend answers.
		c, err := tt.internal.DialContext(context.Background(), "tcp", "", net.JoinHostPort(tunAcme, "8443"))
		if err != nil {
			t.Fatalf("control: the backend does not answer inside: %v", err)
		}
		c.Close()
		ports := []int{8443, 18401, 18402, 18403, 9481, 9482}
		for p := 1; p <= 1024; p++ {
			ports = append(ports, p)
		}
		open := scan(tt, ports, []string{tunAcme, tunGlobex})
		if len(open) > 0 {
			t.Fatalf("reachable from the gateway's side of the firewall: %v", open)
		}
	})

	t.Run("tenants stay on their own connectors", func(t *testing.T) {
		for range 5 {
			for _, tenant := range []string{"acme", "globex"} {
				if code, body := tt.curl(t, tenant, "/x"); code != 200 || !strings.Contains(body, "tenant "+tenant) {
					t.Fatalf("%s: %d %q", tenant, code, body)
				}
			}
		}
		for addr, want := range map[string]string{tunAcme: "acme", tunGlobex: "globex"} {
			if seen, _ := tt.tenantsSeen.Load(addr); seen != want {
				t.Errorf("backend %s saw tenants %v, want only %s", addr, seen, want)
			}
		}
		// A connector holding globex's connector certificate that says
		// it is acme's: its tunnel is bound to globex, never to acme.
		impostor := tt.startConnector(t, "impostor", "acme", tt.connLeaf["globex"], 1, "")
		tt.waitTunnels(t, "globex", 5)
		if v := tt.gatewayMetric(t, `gatehouse_tunnels_up{peer="acme",role="gateway"}`); v != 4 {
			t.Fatalf("acme's tunnels: %v, want 4 (the impostor's is globex's)", v)
		}
		for range 10 {
			if code, body := tt.curl(t, "acme", "/x"); code != 200 || !strings.Contains(body, "tenant acme") {
				t.Fatalf("acme with an impostor up: %d %q", code, body)
			}
		}
		if v := metricOf(t, impostor, `gatehouse_tunnel_streams_total{result="served",role="connector",tenant="acme"}`); v != 0 {
			t.Fatalf("the impostor served %v of acme's streams", v)
		}
		impostor.kill()
		tt.waitTunnels(t, "globex", 4)
	})

	t.Run("s3270 reads the internal mainframe's screen down the tunnel", func(t *testing.T) {
		s3270 := netns.RequireTool(t, "s3270", "s3270")
		c := tt.clients["acme"]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := tt.cloud.Command(s3270, "-cafile", tt.serverCA.CertFile, "-certfile", c.CertFile, "-keyfile", c.KeyFile, "-connecttimeout", "10")
		cmd.Stdin = strings.NewReader("Connect(L:gate.example:9923)\nWait(15,InputField)\nAscii()\nDisconnect()\nQuit()\n")
		done := make(chan struct{})
		go func() {
			select {
			case <-ctx.Done():
				cmd.Process.Kill()
			case <-done:
			}
		}()
		out, err := cmd.CombinedOutput()
		close(done)
		if err != nil || !strings.Contains(string(out), tn3270host.ScreenTitle) {
			t.Fatalf("s3270: %v\n%s\nconnector:\n%s", err, out, tt.connectors["acme"].out.String())
		}
	})

	t.Run("SOAP is allowed and refused by the connector as by an appliance", func(t *testing.T) {
		soap := func(op string) string {
			c := tt.clients["acme"]
			env := `<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>` +
				`<` + op + ` xmlns="urn:acme"><id>42</id></` + op + `></soap:Body></soap:Envelope>`
			out, _ := tt.cloud.Command("curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert", tt.serverCA.CertFile,
				"--cert", c.CertFile, "--key", c.KeyFile, "--resolve", "gate.example:8444:"+tunGateway,
				"-H", "Content-Type: text/xml; charset=utf-8", "-H", `SOAPAction: "urn:acme:`+op+`"`,
				"--data-binary", env, "https://gate.example:8444/orders").CombinedOutput()
			return string(out)
		}
		before := tt.hits[tunAcme].Load()
		if out := soap("GetOrder"); !strings.HasSuffix(strings.TrimSpace(out), "200") || !strings.Contains(out, "tenant acme") {
			t.Fatalf("allowed operation: %s", out)
		}
		if out := soap("DeleteOrder"); strings.HasSuffix(strings.TrimSpace(out), "200") || !strings.Contains(out, "Fault") {
			t.Fatalf("operation outside soap_actions: %s", out)
		}
		if n := tt.hits[tunAcme].Load() - before; n != 1 {
			t.Errorf("the service got %d requests, want only the allowed one", n)
		}
		if v := metricOf(t, tt.connectors["acme"], `gatehouse_soap_rejections_total{reason="action_not_allowed",tenant="acme"}`); v != 1 {
			t.Errorf("connector's soap rejections = %v, want 1", v)
		}
	})

	t.Run("a client the connector's CRL revokes gets an answer in its protocol", func(t *testing.T) {
		// The gateway admits the client (its tenants carry no CRL); the
		// connector's proxy identifies the certificate again, finds it on
		// its CRL and refuses before a byte: the gateway answers, the
		// backend never hears of it.
		before := tt.hits[tunAcme].Load()
		code, body := tt.curl(t, "acme-revoked", "/x")
		want := "the tenant's connector refused the session: client certificate refused by the connector (revoked)"
		if code != 503 || !strings.Contains(body, want) {
			t.Errorf("https: %d %q, want 503 with %q\nconnector:\n%s", code, body, want, tt.connectors["acme"].out.String())
		}
		if screen := tt.terminal(t, "acme-revoked", "9923"); !strings.Contains(screen, "gatehouse: "+want) {
			t.Errorf("tn3270: %q, want the reason as text", screen)
		}
		if n := tt.hits[tunAcme].Load() - before; n != 0 {
			t.Errorf("the backend got %d requests of a revoked client", n)
		}
		if v := metricOf(t, tt.connectors["acme"], `gatehouse_tunnel_streams_total{result="refused",role="connector",tenant="acme"}`); v < 2 {
			t.Errorf("connector's refused streams = %v, want 2", v)
		}
		if !strings.Contains(tt.connectors["acme"].out.String(), "on CRL") {
			t.Errorf("the connector's log does not name the CRL:\n%s", tt.connectors["acme"].out.String())
		}
		// acme's other client is served as before.
		if code, _ := tt.curl(t, "acme", "/x"); code != 200 {
			t.Errorf("acme's client in good standing: %d", code)
		}
	})

	t.Run("status shows the tunnels", func(t *testing.T) {
		for name, want := range map[string][]string{
			"gateway": {"Tunnels (gateway)", "acme", "globex"},
			"acme":    {"Tunnels (connector)", tunGwInside + ":443"},
		} {
			out, err := exec.Command(binary(t), "status", "-c", tt.configs[name]).CombinedOutput()
			if err != nil {
				t.Fatalf("%s status: %v\n%s", name, err, out)
			}
			for _, w := range want {
				if !strings.Contains(string(out), w) {
					t.Errorf("%s status lacks %q:\n%s", name, w, out)
				}
			}
			if !regexp.MustCompile(`(?m)^\s+(acme|` + regexp.QuoteMeta(tunGwInside) + `:443)\s+4$`).Match(out) {
				t.Errorf("%s status does not show 4 tunnels up:\n%s", name, out)
			}
		}
	})

	t.Run("a reload keeps the tunnels and their sessions", func(t *testing.T) {
		for _, d := range []*daemonProc{tt.gateway, tt.connectors["acme"]} {
			if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			d.waitFor(t, "the reload", func() bool {
				return metricOf(t, d, `gatehouse_config_reloads_total{result="ok"}`) >= 1
			})
		}
		if v := tt.gatewayMetric(t, `gatehouse_tunnels_up{peer="acme",role="gateway"}`); v != 4 {
			t.Errorf("acme's tunnels after the reloads: %v", v)
		}
		// The connector checks streams against the listeners of the
		// generation the reload put in force.
		if code, body := tt.curl(t, "acme", "/x"); code != 200 {
			t.Fatalf("after the reloads: %d %q", code, body)
		}
	})

	t.Run("the allow-list refuses a route outside it", func(t *testing.T) {
		code, body := tt.curl(t, "acme", "/off/report")
		if code != 502 {
			t.Fatalf("route to %s outside the allow-list: %d %q, want 502", tunOff, code, body)
		}
		if n := tt.hits[tunOff].Load(); n != 0 {
			t.Fatalf("the backend outside the allow-list got %d requests", n)
		}
		if !strings.Contains(tt.connectors["acme"].out.String(), "backend "+tunOff+":8443 is outside connector.allow") {
			t.Errorf("the connector did not warn of the route at start")
		}
		if !strings.Contains(tt.connectors["acme"].out.String(), "not in connector.allow") {
			t.Errorf("the connector's log does not say why:\n%s", tt.connectors["acme"].out.String())
		}
	})

	t.Run("lost tunnels: new sessions recover", func(t *testing.T) {
		// One tunnel's socket destroyed at the connector: the others carry on.
		killTunnels(t, tt, 1)
		start := time.Now()
		recoverAfter(t, tt, start, "one tunnel lost")
		// Every tunnel of both connectors at once: sessions come back
		// once the connectors have dialled again.
		killTunnels(t, tt, -1)
		start = time.Now()
		recoverAfter(t, tt, start, "all tunnels lost")
		tt.waitTunnels(t, "acme", 4)
	})

	t.Run("a tenant without a connector gets an answer in its protocol", func(t *testing.T) {
		code, body := tt.curl(t, "initech", "/x")
		if code != 503 || !strings.Contains(body, "no connector of the tenant is connected") {
			t.Errorf("https: %d %q, want 503 with the reason", code, body)
		}
		c := tt.clients["initech"]
		out, _ := tt.cloud.Command("curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert", tt.serverCA.CertFile,
			"--cert", c.CertFile, "--key", c.KeyFile, "--resolve", "gate.example:8444:"+tunGateway,
			"-H", "Content-Type: text/xml; charset=utf-8", "-H", `SOAPAction: "urn:initech:Get"`,
			"--data", `<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><Get/></soap:Body></soap:Envelope>`,
			"https://gate.example:8444/svc").CombinedOutput()
		if s := string(out); !strings.HasSuffix(strings.TrimSpace(s), "503") || !strings.Contains(s, "<soap:Fault>") || !strings.Contains(s, "no connector") {
			t.Errorf("soap: %s, want 503 with a SOAP Fault", s)
		}
		// globex's connector has no mainframe: it refuses the stream, and
		// its reason reaches the terminal.
		if screen := tt.terminal(t, "globex", "9923"); !strings.Contains(screen, `the tenant's connector refused the session: this connector has no listener "mainframe"`) {
			t.Errorf("tn3270 of a tenant whose connector has no such listener: %q", screen)
		}
		screen := tt.terminal(t, "initech", "9923")
		if !strings.Contains(screen, "gatehouse: no connector of the tenant is connected") {
			t.Errorf("tn3270: %q, want the reason as text", screen)
		}
		if v := tt.gatewayMetric(t, `gatehouse_tunnel_streams_total{result="no_tunnel",role="gateway",tenant="initech"}`); v != 3 {
			t.Errorf("no_tunnel streams of initech: %v, want 3", v)
		}
		if n := countLines(tt.gateway.out.String(), "session refused: no connector of the tenant is connected", "tenant=initech"); n != 3 {
			t.Errorf("%d refusal lines, want 3", n)
		}
	})

	t.Run("a connector leaves through the site's HTTP proxy with CONNECT", func(t *testing.T) {
		px := tt.startTinyproxy(t)
		pw := filepath.Join(tt.dir, "proxy-password")
		if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		proxied := tt.startConnector(t, "proxied", "acme", tt.connLeaf["acme"], 1,
			fmt.Sprintf("  proxy: {address: \"%s:8888\", username: tunnel, password_file: %s}", tunProxy, pw))
		tt.waitTunnels(t, "acme", 5)
		if !strings.Contains(px.String(), "CONNECT") {
			t.Errorf("the proxy saw no CONNECT:\n%s", px.String())
		}
		proxied.kill()
		tt.waitTunnels(t, "acme", 4)
		// A wrong password: the proxy refuses (tinyproxy answers 401, most
		// proxies 407), the connector says so, and no tunnel comes up.
		if err := os.WriteFile(pw, []byte("wrong\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd, out := tt.runConnector(t, "badauth", "acme", tt.connLeaf["acme"], 1,
			fmt.Sprintf("  proxy: {address: \"%s:8888\", username: tunnel, password_file: %s}", tunProxy, pw))
		deadline := time.Now().Add(15 * time.Second)
		refused := fmt.Sprintf("CONNECT %s:443: 40", tunGwInside)
		for !strings.Contains(out.String(), refused) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		cmd.Process.Kill()
		cmd.Wait()
		if !strings.Contains(out.String(), refused) {
			t.Fatalf("the connector does not say the proxy refused it (%v):\n%s\nproxy:\n%s", cmd.ProcessState, out.String(), px.String())
		}
		if v := tt.gatewayMetric(t, `gatehouse_tunnels_up{peer="acme",role="gateway"}`); v != 4 {
			t.Fatalf("acme tunnels %v after a refused CONNECT, want 4", v)
		}
	})

	t.Run("revoking a connector certificate closes its tunnels", func(t *testing.T) {
		tt.connCA["acme"].CRL(t, tt.crl, time.Now().Add(24*time.Hour), tt.connLeaf["acme"])
		tt.waitTunnels(t, "acme", 0)
		code, body := tt.curl(t, "acme", "/x")
		if code != 503 || !strings.Contains(body, "connector") {
			t.Fatalf("acme with its connector revoked: %d %q, want 503 naming the connector", code, body)
		}
		if !strings.Contains(tt.gateway.out.String(), "no longer checks out") {
			t.Errorf("the gateway does not log why it closed the tunnels")
		}
		// globex is untouched.
		if code, _ := tt.curl(t, "globex", "/x"); code != 200 {
			t.Fatalf("globex after acme's revocation: %d", code)
		}
	})
}

// scan connects to every port of every address from the gateway's
// namespace, 200 at a time, one second each, and returns what connected.
func scan(tt *tunnelTopo, ports []int, addrs []string) []string {
	var mu sync.Mutex
	var open []string
	sem := make(chan struct{}, 200)
	var wg sync.WaitGroup
	for _, a := range addrs {
		for _, p := range ports {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				c, err := tt.gw.DialContext(ctx, "tcp", "", net.JoinHostPort(a, fmt.Sprint(p)))
				if err == nil {
					c.Close()
					mu.Lock()
					open = append(open, fmt.Sprintf("%s:%d", a, p))
					mu.Unlock()
				} else if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "timeout") {
					mu.Lock()
					open = append(open, fmt.Sprintf("%s:%d answered (%v)", a, p, err))
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	return open
}

// killTunnels destroys n of the connectors' tunnel sockets in the internal
// namespace (all of them for n < 0), as a NAT or firewall losing the flow
// would: the connector sees the loss at once, the gateway by keepalive.
func killTunnels(t *testing.T, tt *tunnelTopo, n int) {
	t.Helper()
	filter := []string{"-K", "dst", tunGwInside, "dport", "=", "443"}
	if n > 0 {
		out, err := tt.internal.Command("ss", "-Htn", "dst", tunGwInside, "dport", "=", "443").CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v %s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) < n {
			t.Fatalf("only %d tunnel sockets: %s", len(lines), out)
		}
		f := strings.Fields(lines[0])
		_, sport, _ := net.SplitHostPort(f[3])
		filter = append(filter, "sport", "=", sport)
	}
	if out, err := tt.internal.Command("ss", filter...).CombinedOutput(); err != nil {
		t.Fatalf("ss %v: %v %s", filter, err, out)
	}
}

// recoverAfter asks as acme until a request succeeds and logs how long
// sessions were lost; it fails after 30 s.
func recoverAfter(t *testing.T, tt *tunnelTopo, start time.Time, what string) {
	t.Helper()
	failed := 0
	for time.Since(start) < 30*time.Second {
		if code, _ := tt.curl(t, "acme", "/x"); code == 200 {
			t.Logf("%s: sessions served again after %s (%d failed meanwhile)", what, time.Since(start).Round(time.Millisecond), failed)
			return
		}
		failed++
	}
	t.Fatalf("%s: no session served within 30s\ngateway:\n%s", what, tt.gateway.out.String())
}

// countLines counts the lines of s that contain every one of parts.
func countLines(s string, parts ...string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			n++
		}
	}
	return n
}
