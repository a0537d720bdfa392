// Command loadgen is the load generator and the backends of bench/run.sh.
// wrk and h2load cannot present a client certificate, so this one does.
//
//	loadgen serve  -addr A          HTTP/1.1 backend: /1k and /1m bodies
//	loadgen sink   -addr A          TCP sink: reads and discards
//	loadgen hs     -target A …      new TLS handshake per request (Connection: close)
//	loadgen ka     -target A …      keep-alive GET /1k, p50/p99 latency
//	loadgen h2     -target A …      GET /1k over HTTP/2: -conc connections, -streams each
//	loadgen bulk   -target A …      keep-alive GET /1m, MiB/s
//	loadgen stream -target A …      one TLS stream written to a sink, MiB/s
//	loadgen idle   -target A -n N   hold N TLS sessions open until signalled
//
// The client modes run for -dur (or -max requests), then print one line of
// key=value pairs: rate, errors, the CPU seconds the -pids used meanwhile
// (utime+stime from /proc/<pid>/stat), and the machine's steal share.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	small = 1 << 10
	large = 1 << 20
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen serve|sink|echoserve|hs|ka|h2|bulk|stream|echo|idle [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	o := opts{}
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8080", "serve/sink: listen address")
	fs.StringVar(&o.target, "target", "", "host:port of the TLS server under test")
	fs.StringVar(&o.sni, "sni", "bench.example", "server name to send and verify")
	fs.StringVar(&o.cert, "cert", "", "client certificate (PEM)")
	fs.StringVar(&o.key, "key", "", "client key (PEM)")
	fs.StringVar(&o.ca, "ca", "", "CA of the server certificate (PEM)")
	fs.DurationVar(&o.dur, "dur", 4*time.Second, "measured duration")
	fs.DurationVar(&o.warm, "warm", 300*time.Millisecond, "unmeasured warm-up before it (0: none, for exact counts)")
	fs.IntVar(&o.max, "max", 0, "stop after this many requests (0: -dur only)")
	fs.IntVar(&o.conc, "conc", 4, "concurrent connections")
	fs.IntVar(&o.streams, "streams", 1, "h2: concurrent streams per connection")
	fs.IntVar(&o.n, "n", 1000, "idle: sessions to hold")
	fs.StringVar(&o.pids, "pids", "", "comma-separated PIDs whose CPU time to report")
	fs.Parse(os.Args[2:])

	var err error
	switch mode {
	case "serve":
		err = serve(o.addr)
	case "sink":
		err = sink(o.addr)
	case "echoserve":
		err = echoServe(o.addr)
	case "hs", "ka", "h2", "bulk", "stream", "echo":
		err = client(mode, o)
	case "idle":
		err = idle(o)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

type opts struct {
	addr, target, sni, cert, key, ca, pids string
	dur, warm                              time.Duration
	max, conc, n, streams                  int
}

// untilSignal returns a context cancelled by SIGTERM or SIGINT.
func untilSignal() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// serve is the backend every server under test forwards to. It counts the
// connections it accepted, so that the run can confirm reuse (or its
// absence) and prints the count when stopped.
func serve(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	var conns atomic.Int64
	body := make([]byte, large)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := small
		if r.URL.Path == "/1m" {
			n = large
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(body[:n])
	})
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	ctx, cancel := untilSignal()
	defer cancel()
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	fmt.Fprintf(os.Stderr, "backend connections=%d\n", conns.Load())
	return nil
}

// sink accepts TCP connections and discards what they send.
func sink(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ctx, cancel := untilSignal()
	defer cancel()
	go func() { <-ctx.Done(); ln.Close() }()
	var conns atomic.Int64
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				fmt.Fprintf(os.Stderr, "sink connections=%d\n", conns.Load())
				return nil
			}
			return err
		}
		conns.Add(1)
		go func() {
			io.Copy(io.Discard, c)
			c.Close()
		}()
	}
}

// tlsConfig builds the client side. -cert and -key may list several
// comma-separated pairs (several tenants); connections take them in turn.
func tlsConfig(o opts) (*tls.Config, error) {
	certs, keys := strings.Split(o.cert, ","), strings.Split(o.key, ",")
	if len(certs) != len(keys) {
		return nil, fmt.Errorf("%d certificates but %d keys", len(certs), len(keys))
	}
	var pairs []tls.Certificate
	for i := range certs {
		pair, err := tls.LoadX509KeyPair(certs[i], keys[i])
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		pairs = append(pairs, pair)
	}
	var turn atomic.Uint64
	pem, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, fmt.Errorf("server CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("server CA %s: no certificate", o.ca)
	}
	return &tls.Config{
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &pairs[(turn.Add(1)-1)%uint64(len(pairs))], nil
		},
		RootCAs:    pool,
		ServerName: o.sni,
		MinVersion: tls.VersionTLS13,
		// The same key exchange for every server: the OpenSSL 3.0 peers
		// do not offer the hybrid post-quantum group Go prefers.
		CurvePreferences: []tls.CurveID{tls.X25519},
		NextProtos:       []string{"http/1.1"},
		// No session cache: every connection is a full handshake.
	}, nil
}

// procCPU is the summed utime+stime of pids, in seconds.
func procCPU(pids []int) float64 {
	var ticks int64
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		// After the command: state is field 3; utime and stime are 14, 15.
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + st
	}
	return float64(ticks) / 100 // USER_HZ
}

// cpuStat returns the total and steal jiffies of /proc/stat's cpu line.
func cpuStat() (total, steal int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i < 8 { // guest time is already in user
			total += v
		}
		if i == 7 {
			steal = v
		}
	}
	return total, steal
}

func parsePIDs(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, n)
		}
	}
	return out
}

type result struct {
	mu       sync.Mutex
	ok, errs atomic.Int64
	bytes    atomic.Int64
	lat      []time.Duration
	firstErr error
	tlsState string
}

func (r *result) fail(err error) {
	r.errs.Add(1)
	r.mu.Lock()
	if r.firstErr == nil {
		r.firstErr = err
	}
	r.mu.Unlock()
}

func (r *result) state(cs tls.ConnectionState) {
	r.mu.Lock()
	if r.tlsState == "" {
		r.tlsState = strings.ReplaceAll(tls.VersionName(cs.Version), " ", "") + "/" + strings.TrimPrefix(tls.CipherSuiteName(cs.CipherSuite), "TLS_") +
			"/" + cs.CurveID.String()
	}
	r.mu.Unlock()
}

func client(mode string, o opts) error {
	cfg, err := tlsConfig(o)
	if err != nil {
		return err
	}
	pids := parsePIDs(o.pids)
	conc := o.conc
	if mode == "stream" {
		conc = 1
	}
	// A short warm-up outside the measurement: the server's first
	// connection, its backend pool, page faults.
	warm := &result{}
	if o.warm > 0 {
		warmCtx, cancelWarm := context.WithTimeout(context.Background(), o.warm)
		runWorkers(warmCtx, mode, o, cfg, conc, warm, 0)
		cancelWarm()
	}
	if warm.ok.Load() == 0 && warm.firstErr != nil {
		return fmt.Errorf("warm-up: %w", warm.firstErr)
	}

	res := &result{}
	ctx, cancel := context.WithTimeout(context.Background(), o.dur)
	defer cancel()
	t0, s0 := cpuStat()
	c0 := procCPU(pids)
	start := time.Now()
	runWorkers(ctx, mode, o, cfg, conc, res, int64(o.max))
	elapsed := time.Since(start).Seconds()
	cpu := procCPU(pids) - c0
	t1, s1 := cpuStat()
	steal := 0.0
	if t1 > t0 {
		steal = float64(s1-s0) / float64(t1-t0)
	}
	ok := float64(res.ok.Load())
	fmt.Printf("mode=%s ok=%d errors=%d secs=%.3f rate=%.1f mibps=%.1f cpu=%.3f steal=%.3f",
		mode, res.ok.Load(), res.errs.Load(), elapsed, ok/elapsed,
		float64(res.bytes.Load())/(1<<20)/elapsed, cpu/elapsed, steal)
	if len(res.lat) > 0 {
		slices.Sort(res.lat)
		p := func(q float64) float64 { return float64(res.lat[int(q*float64(len(res.lat)-1))].Microseconds()) }
		fmt.Printf(" p50us=%.0f p99us=%.0f", p(0.50), p(0.99))
	}
	fmt.Printf(" tls=%s\n", res.tlsState)
	if res.firstErr != nil {
		fmt.Fprintln(os.Stderr, "loadgen: first error:", res.firstErr)
	}
	if res.ok.Load() == 0 {
		return fmt.Errorf("no request succeeded")
	}
	return nil
}

// done reports whether ctx has ended or passed its deadline: the
// context's own timer may fire late on a loaded core, and a dial past the
// deadline fails at once, which is not a failure of the server.
func done(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

func runWorkers(ctx context.Context, mode string, o opts, cfg *tls.Config, conc int, res *result, max int64) {
	var issued atomic.Int64
	more := func() bool {
		return !done(ctx) && (max == 0 || issued.Add(1) <= max)
	}
	var wg sync.WaitGroup
	if mode == "h2" {
		h2Workers(ctx, o, cfg, conc, res, more)
		return
	}
	for range conc {
		wg.Go(func() {
			var lat []time.Duration
			switch mode {
			case "hs":
				for more() {
					if err := oneShot(ctx, o, cfg, res); err != nil {
						res.fail(err)
					}
				}
			case "ka", "bulk":
				path, size := "/1k", small
				if mode == "bulk" {
					path, size = "/1m", large
				}
				lat = keepAlive(ctx, o, cfg, res, path, size, more)
			case "stream":
				stream(ctx, o, cfg, res)
			case "echo":
				lat = echo(ctx, o, cfg, res, more)
			}
			res.mu.Lock()
			res.lat = append(res.lat, lat...)
			res.mu.Unlock()
		})
	}
	wg.Wait()
}

func dial(ctx context.Context, o opts, cfg *tls.Config, res *result) (*tls.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", o.target)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	res.state(c.ConnectionState())
	return c, nil
}

// readResponse reads one response and checks its status and length.
func readResponse(br *bufio.Reader, want int) (int64, bool, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, false, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return n, false, err
	}
	if resp.StatusCode != 200 || n != int64(want) {
		return n, false, fmt.Errorf("status %d, %d bytes (want 200, %d)", resp.StatusCode, n, want)
	}
	return n, resp.Close, nil
}

func oneShot(ctx context.Context, o opts, cfg *tls.Config, res *result) error {
	c, err := dial(ctx, o, cfg, res)
	if err != nil {
		if done(ctx) {
			return nil
		}
		return err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /1k HTTP/1.1\r\nHost: "+o.sni+"\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	n, _, err := readResponse(bufio.NewReader(c), small)
	if err != nil {
		return err
	}
	res.ok.Add(1)
	res.bytes.Add(n)
	return nil
}

func keepAlive(ctx context.Context, o opts, cfg *tls.Config, res *result, path string, size int, more func() bool) []time.Duration {
	var lat []time.Duration
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + o.sni + "\r\n\r\n")
	var c *tls.Conn
	var br *bufio.Reader
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for more() {
		if c == nil {
			var err error
			if c, err = dial(ctx, o, cfg, res); err != nil {
				if !done(ctx) {
					res.fail(err)
					time.Sleep(10 * time.Millisecond)
				}
				continue
			}
			c.SetDeadline(time.Time{})
			br = bufio.NewReaderSize(c, 64<<10)
		}
		t := time.Now()
		c.SetDeadline(t.Add(10 * time.Second))
		_, err := c.Write(req)
		var n int64
		var closing bool
		if err == nil {
			n, closing, err = readResponse(br, size)
		}
		if err != nil {
			if !done(ctx) {
				res.fail(err)
			}
			c.Close()
			c = nil
			continue
		}
		lat = append(lat, time.Since(t))
		res.ok.Add(1)
		res.bytes.Add(n)
		if closing {
			c.Close()
			c = nil
		}
	}
	return lat
}

// stream writes 64 KiB chunks through the TLS connection for the duration;
// ok counts the chunks.
func stream(ctx context.Context, o opts, cfg *tls.Config, res *result) {
	c, err := dial(ctx, o, cfg, res)
	if err != nil {
		res.fail(err)
		return
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	for !done(ctx) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Write(buf)
		res.bytes.Add(int64(n))
		if err != nil {
			res.fail(err)
			return
		}
		res.ok.Add(1)
	}
}

// echoSize is the message of the terminal pattern: a screen update or a
// keystroke's answer, echoed by the backend.
const echoSize = 256

// echo is one connection's round trips: 256 bytes written, the same 256
// read back, the next only then.
func echo(ctx context.Context, o opts, cfg *tls.Config, res *result, more func() bool) []time.Duration {
	c, err := dial(ctx, o, cfg, res)
	if err != nil {
		res.fail(err)
		return nil
	}
	defer c.Close()
	msg := make([]byte, echoSize)
	got := make([]byte, echoSize)
	var lat []time.Duration
	for more() {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			res.fail(err)
			return lat
		}
		if _, err := io.ReadFull(c, got); err != nil {
			res.fail(err)
			return lat
		}
		lat = append(lat, time.Since(t0))
		res.bytes.Add(echoSize)
		res.ok.Add(1)
	}
	return lat
}

// echoServe is the backend of the round trips: it sends back what it reads.
func echoServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	ctx, cancel := untilSignal()
	defer cancel()
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			io.Copy(c, c)
			c.Close()
		}()
	}
}

// idle opens n sessions, sends one byte on each (so that the proxy has
// dialled its backend), prints "ready N" and holds them until a signal
// comes or two minutes pass.
func idle(o opts) error {
	cfg, err := tlsConfig(o)
	if err != nil {
		return err
	}
	ctx, cancel := untilSignal()
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelT()
	res := &result{}
	conns := make(chan *tls.Conn, o.n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for next.Add(1) <= int64(o.n) && ctx.Err() == nil {
				c, err := dial(ctx, o, cfg, res)
				if err == nil {
					_, err = c.Write([]byte{'\n'})
				}
				if err != nil {
					res.fail(err)
					continue
				}
				c.SetDeadline(time.Time{})
				conns <- c
			}
		})
	}
	wg.Wait()
	close(conns)
	var held []*tls.Conn
	for c := range conns {
		held = append(held, c)
	}
	fmt.Printf("ready %d errors=%d\n", len(held), res.errs.Load())
	if res.firstErr != nil {
		fmt.Fprintln(os.Stderr, "loadgen: first error:", res.firstErr)
	}
	<-ctx.Done()
	for _, c := range held {
		c.Close()
	}
	return nil
}

// h2Workers runs conc HTTP/2 connections with o.streams requests in flight
// on each, all GET /1k, until more says stop; the latencies go to res. Go's
// own HTTP/2 client: h2load cannot present a client certificate.
func h2Workers(ctx context.Context, o opts, cfg *tls.Config, conc int, res *result, more func() bool) {
	var wg sync.WaitGroup
	for range conc {
		tc := cfg.Clone()
		tc.NextProtos = []string{"h2"}
		tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, MaxConnsPerHost: 1,
			DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext, ResponseHeaderTimeout: 10 * time.Second}
		// HTTP/2 only: a server that does not negotiate it fails the run
		// rather than being measured on HTTP/1.1.
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP2(true)
		c := &http.Client{Transport: tr}
		url := "https://" + o.target + "/1k"
		for range max(o.streams, 1) {
			wg.Go(func() {
				var lat []time.Duration
				for more() {
					t := time.Now()
					n, err := h2Get(ctx, c, url, o.sni, res)
					if err != nil {
						if !done(ctx) {
							res.fail(err)
						}
						continue
					}
					lat = append(lat, time.Since(t))
					res.ok.Add(1)
					res.bytes.Add(n)
				}
				res.mu.Lock()
				res.lat = append(res.lat, lat...)
				res.mu.Unlock()
			})
		}
		defer tr.CloseIdleConnections()
	}
	wg.Wait()
}

func h2Get(ctx context.Context, c *http.Client, url, host string, res *result) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.TLS != nil {
		res.state(*resp.TLS)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return n, err
	}
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || n != small {
		return n, fmt.Errorf("%s status %d, %d bytes (want HTTP/2.0 200, %d)", resp.Proto, resp.StatusCode, n, small)
	}
	return n, nil
}
