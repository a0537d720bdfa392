package main

import (
	"github.com/gatehouse-dmz/gatehouse/test/tn3270host"

	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// runBackends is the hidden sub-command that plays the internal network,
// run inside the internal namespace: the tenant's HTTPS backend, its SOAP
// service and its TN3270 host. It prints "ready" once all three listen and
// serves until it is killed.
func runBackends(args []string) error {
	fs := flag.NewFlagSet(subBackends, flag.ContinueOnError)
	httpsAddr := fs.String("https", "", "HTTPS backend address")
	soapAddr := fs.String("soap", "", "SOAP backend address (plain HTTP)")
	tnAddr := fs.String("tn3270", "", "TN3270 host address (plain Telnet)")
	certFile := fs.String("cert", "", "HTTPS backend certificate")
	keyFile := fs.String("key", "", "HTTPS backend key")
	name := fs.String("name", "", "the node's name, added to each HTTPS answer (--ha)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *httpsAddr == "" || *soapAddr == "" || *tnAddr == "" || *certFile == "" || *keyFile == "" {
		return fmt.Errorf("%w: %s --https ADDR --soap ADDR --tn3270 ADDR --cert FILE --key FILE", errUsage, subBackends)
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return fmt.Errorf("backend certificate: %w", err)
	}
	httpsLn, err := net.Listen("tcp", *httpsAddr)
	if err != nil {
		return err
	}
	soapLn, err := net.Listen("tcp", *soapAddr)
	if err != nil {
		return err
	}
	tnLn, err := net.Listen("tcp", *tnAddr)
	if err != nil {
		return err
	}

	errc := make(chan error, 3)
	httpsSrv := &http.Server{
		Handler:           http.HandlerFunc(serveOrders),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { errc <- httpsSrv.ServeTLS(httpsLn, "", "") }()
	soapSrv := &http.Server{Handler: http.HandlerFunc(serveSOAP), ReadHeaderTimeout: 10 * time.Second}
	go func() { errc <- soapSrv.Serve(soapLn) }()
	go func() { errc <- tn3270host.Serve(tnLn, os.Stderr) }()

	nodeName = *name
	fmt.Println("ready")
	return <-errc
}

// serveOrders is the tenant's internal HTTPS application. It echoes what
// gatehouse told it about the caller, so the demo shows the tenant comes
// from the certificate and the client address is the cloud's.
func serveOrders(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	node := ""
	if nodeName != "" {
		node = " node=" + nodeName
	}
	fmt.Fprintf(w, "internal HTTPS backend: order service for tenant=%s client=%s path=%s%s\n",
		r.Header.Get("X-Gatehouse-Tenant"), r.Header.Get("X-Forwarded-For"), r.URL.Path, node)
}

// nodeName is the --name of the backends: the gatehouse node in front of
// them (--ha), or empty.
var nodeName string

// serveSOAP is the tenant's internal SOAP 1.1 service: it answers GetOrder.
// gatehouse lets only allowed operations reach it.
func serveSOAP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	if r.Method != http.MethodPost || !strings.Contains(string(body), "GetOrder") {
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>`+
			`<soap:Fault><faultcode>soap:Client</faultcode><faultstring>backend: unknown operation</faultstring></soap:Fault>`+
			`</soap:Body></soap:Envelope>`)
		return
	}
	fmt.Fprintf(w, `<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>`+
		`<GetOrderResponse xmlns="urn:acme"><order id="42" status="shipped" tenant="%s"/></GetOrderResponse>`+
		`</soap:Body></soap:Envelope>`, r.Header.Get("X-Gatehouse-Tenant"))
}

// runScan is the hidden sub-command for the intruder's port scan: one TCP
// connection attempt to each of count ports from first on host, each given
// timeout. It prints one line per port ("open", "refused" or "dropped") and
// never more than count attempts, so the scan is bounded in count and time.
func runScan(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("%w: %s HOST FIRST-PORT COUNT TIMEOUT", errUsage, subScan)
	}
	host := args[0]
	first, err1 := strconv.Atoi(args[1])
	count, err2 := strconv.Atoi(args[2])
	timeout, err3 := time.ParseDuration(args[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	if count < 1 || count > 100 || first < 1 || first+count > 65536 || timeout <= 0 || timeout > 2*time.Second {
		return errors.New("scan: want 1-100 ports and a timeout up to 2s")
	}
	for port := first; port < first+count; port++ {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), timeout)
		var ne net.Error
		switch {
		case err == nil:
			c.Close()
			fmt.Println(port, "open")
		case errors.Is(err, syscall.ECONNREFUSED):
			fmt.Println(port, "refused")
		case errors.As(err, &ne) && ne.Timeout():
			fmt.Println(port, "dropped")
		default:
			fmt.Println(port, "error", err)
		}
	}
	return nil
}

// runProbe is the hidden sub-command for the scan of the internal network:
// one TCP connection attempt to each HOST:PORT, all at once, each given
// timeout. It prints one line per address in the order given ("open",
// "refused" or "dropped"); at most 100 addresses, so it is bounded in count
// and time.
func runProbe(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("%w: %s TIMEOUT HOST:PORT [HOST:PORT ...] (at most 100)", errUsage, subProbe)
	}
	timeout, err := time.ParseDuration(args[0])
	if err != nil {
		return err
	}
	addrs := args[1:]
	if len(addrs) > 100 || timeout <= 0 || timeout > 2*time.Second {
		return errors.New("probe: want up to 100 addresses and a timeout up to 2s")
	}
	results := make([]string, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = probe(a, timeout)
		}()
	}
	wg.Wait()
	for i, a := range addrs {
		fmt.Println(a, results[i])
	}
	return nil
}

// probe is one connection attempt: "open", "refused", "dropped" or
// "error: …".
func probe(addr string, timeout time.Duration) string {
	c, err := net.DialTimeout("tcp", addr, timeout)
	var ne net.Error
	switch {
	case err == nil:
		c.Close()
		return "open"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.As(err, &ne) && ne.Timeout():
		return "dropped"
	}
	return "error: " + err.Error()
}

// startBackends runs this program's backends sub-command in the internal
// namespace and waits for its "ready" line.
func (d *demo) startBackends(ctx context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c := d.command(context.Background(), "internal", self, subBackends,
		"--https", httpsAddr, "--soap", soapAddr, "--tn3270", tn3270Addr,
		"--cert", d.path("pki/backend.pem"), "--key", d.path("pki/backend.key"))
	return d.startReadyLine(ctx, c, d.path("backends.log"))
}

// startReadyLine starts the backends command c with its standard error in
// logPath, registers its stop, and waits for its "ready" line.
func (d *demo) startReadyLine(ctx context.Context, c *exec.Cmd, logPath string) error {
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close() // the child holds its own copy
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	c.Stdout, c.Stderr = pw, logf
	err = c.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		return err
	}
	exited := make(chan struct{})
	go func() { _ = c.Wait(); close(exited) }()
	d.onCleanup(func() { stopProcess(c, exited, 3*time.Second) })

	// The child prints "ready" once all three listeners are bound, then
	// nothing more on standard output.
	ready := make(chan bool, 1)
	go func() {
		defer pr.Close()
		line, _ := bufio.NewReader(pr).ReadString('\n')
		ready <- strings.TrimSpace(line) == "ready"
		_, _ = io.Copy(io.Discard, pr)
	}()
	select {
	case ok := <-ready:
		if ok {
			return nil
		}
		<-exited
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("backends exited: %s", strings.TrimSpace(string(b)))
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return errors.New("backends not ready after 10s")
	}
}
