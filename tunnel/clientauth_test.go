package tunnel

import (
	"crypto/tls"
	"testing"
	"time"
)

// TestConfigForClientMustRequireCertificate: a per-client TLS config that
// asks for no client certificate fails the handshake, as NewGateway
// refuses a base config that does not require one.
func TestConfigForClientMustRequireCertificate(t *testing.T) {
	r := newRig(t, func(cfg *GatewayConfig) {
		base := cfg.TLS.Clone()
		cfg.TLS.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := base.Clone()
			c.ClientAuth = tls.NoClientCert
			return c, nil
		}
	})
	d := &tls.Dialer{Config: &tls.Config{RootCAs: r.gwCA.Pool(), ServerName: "gw.test", NextProtos: []string{ALPN}}}
	c, err := d.Dial("tcp", r.gw.Addr().String())
	if err == nil {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err = c.Read(make([]byte, 1)); err == nil {
			t.Fatal("a connector without a certificate completed a handshake the per-client config did not require it for")
		}
	}
	if r.log.Occurrences("does not require a client certificate") == 0 {
		t.Errorf("no log line says why the handshake failed:\n%s", r.log.String())
	}
}
