package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
)

// adminTarget is where a command reaches the daemon's admin API: its unix
// socket (the default, authorised by the caller's uid), or the HTTPS admin
// endpoint with an admin certificate (--admin-url, --cert, --key, --ca).
type adminTarget struct {
	socket, url, cert, key, ca string
}

// flags adds --socket, --admin-url, --cert, --key and --ca.
func (a *adminTarget) flags(fs *pflag.FlagSet) {
	fs.StringVar(&a.socket, "socket", "", "admin socket (default: admin_socket of the configuration)")
	fs.StringVar(&a.url, "admin-url", "", "the daemon's HTTPS admin endpoint, e.g. https://198.51.100.2:9443 (instead of the socket)")
	fs.StringVar(&a.cert, "cert", "", "with --admin-url: the admin client certificate (PEM)")
	fs.StringVar(&a.key, "key", "", "with --admin-url: its private key (PEM)")
	fs.StringVar(&a.ca, "ca", "", "with --admin-url: the CA(s) that issued the endpoint's server certificate (PEM)")
}

// resolve fills in the socket from the configuration when neither it nor
// a URL was given; a configuration that does not load leaves the default
// socket, said on stderr.
func (a *adminTarget) resolve(configPath, name string, stderr io.Writer) error {
	if a.url != "" {
		if !strings.HasPrefix(a.url, "https://") {
			return exitError{code: 2, msg: fmt.Sprintf("gatehouse %s: --admin-url must be https:// (the endpoint is mutual TLS only)", name)}
		}
		if a.cert == "" || a.key == "" || a.ca == "" {
			return exitError{code: 2, msg: fmt.Sprintf("gatehouse %s: --admin-url needs --cert, --key and --ca", name)}
		}
		return nil
	}
	if a.socket == "" {
		cfg, err := config.Peek(configPath)
		if err != nil {
			fmt.Fprintf(stderr, "gatehouse %s: configuration not read (%v); trying the default socket\n", name, err)
			cfg = config.Defaults()
		}
		a.socket = cfg.AdminSocket
	}
	return nil
}

// where names the target for messages.
func (a *adminTarget) where() string {
	if a.url != "" {
		return "at " + a.url
	}
	return "on " + a.socket
}

// client returns an HTTP client for the target and the base URL of its
// requests; timeout 0 leaves the bound to the request's context.
func (a *adminTarget) client(timeout time.Duration) (*http.Client, string, error) {
	if a.url == "" {
		return adminClient(a.socket, timeout), "http://gatehouse", nil
	}
	cert, err := tls.LoadX509KeyPair(a.cert, a.key)
	if err != nil {
		return nil, "", fmt.Errorf("admin certificate: %w", err)
	}
	pem, err := os.ReadFile(a.ca)
	if err != nil {
		return nil, "", fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, "", fmt.Errorf("--ca: no certificate in %s", a.ca)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{cert}}}
	return &http.Client{Timeout: timeout, Transport: tr}, strings.TrimRight(a.url, "/"), nil
}

// adminClient talks HTTP to the daemon on its admin socket; timeout 0
// leaves the bound to the request's context.
func adminClient(socket string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
}

// errNoAnswer wraps a failure to reach the daemon (exit status 3).
var errNoAnswer = errors.New("no answer from the daemon")

// adminAnswer is the daemon's answer: status and body.
type adminAnswer struct {
	code int
	body []byte
}

// call sends method path to the target and reads the answer (at most
// limit bytes). An error means the daemon was not reached.
func (a *adminTarget) call(ctx context.Context, timeout time.Duration, method, path string, limit int64) (adminAnswer, error) {
	c, base, err := a.client(timeout)
	if err != nil {
		return adminAnswer{}, err
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
	if err != nil {
		return adminAnswer{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return adminAnswer{}, fmt.Errorf("%w %s: %w", errNoAnswer, a.where(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return adminAnswer{}, fmt.Errorf("%w %s: %w", errNoAnswer, a.where(), err)
	}
	return adminAnswer{code: resp.StatusCode, body: body}, nil
}

// refusal turns a non-200 answer into the command's error: a refusal
// (403) says what was refused and why, as the daemon put it (role,
// scope); exit status 1.
func (ans adminAnswer) refusal(name string) error {
	msg := strings.TrimSpace(string(ans.body))
	if ans.code == http.StatusForbidden {
		return exitError{code: 1, msg: fmt.Sprintf("gatehouse %s: %s", name, msg)}
	}
	return exitError{code: 1, msg: fmt.Sprintf("gatehouse %s: %s (%d)", name, msg, ans.code)}
}
