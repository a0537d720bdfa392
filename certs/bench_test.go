package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// The server-side benchmark runs its clients in a child process (this test
// binary again), so that the server's CPU time can be measured alone.
const benchClientEnv = "GATEHOUSE_BENCH_CLIENT"

func TestMain(m *testing.M) {
	if os.Getenv(benchClientEnv) != "" {
		if err := benchClient(); err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func benchSetup(b *testing.B) (srv *tls.Config, client *tls.Config, files map[string]string) {
	b.Helper()
	srvCA := certstest.NewCA(b, "server CA")
	server := srvCA.Server(b, "gw.example")
	ca := certstest.NewCA(b, "acme CA")
	leaf := ca.Client(b, "acme", "spiffe://acme/cloud")
	crl := ca.CRL(b, b.TempDir()+"/acme.crl", time.Now().Add(time.Hour), ca.Client(b, "old"))
	p := &policy.Policy{
		Tenants: []policy.Tenant{{ID: "acme", ClientCA: ca.CertFile, CRL: crl,
			Identities: policy.Identities{URISAN: []string{"spiffe://acme/*"}}}},
		Listeners: []policy.Listener{{Name: "web", ServerCert: server.CertFile, ServerKey: server.KeyFile}},
	}
	m := newManager(b, Config{}, p)
	srv, err := m.TLSConfig("web")
	if err != nil {
		b.Fatal(err)
	}
	client = &tls.Config{RootCAs: srvCA.Pool(), ServerName: "gw.example", Certificates: []tls.Certificate{leaf.TLS}}
	return srv, client, map[string]string{"ca": srvCA.CertFile, "cert": leaf.CertFile, "key": leaf.KeyFile}
}

// BenchmarkHandshakeInProcess: full TLS 1.3 mTLS handshakes (ECDSA P-256
// both sides, CRL and identity checks) with client and server in this
// process over net.Pipe; with -cpu 1 both ends share one core.
// handshakes/cpu-s counts both ends' CPU time.
func BenchmarkHandshakeInProcess(b *testing.B) {
	srv, client, _ := benchSetup(b)
	for _, curve := range []string{"default", "x25519"} {
		b.Run(curve, func(b *testing.B) {
			cc := client.Clone()
			if curve == "x25519" {
				cc.CurvePreferences = []tls.CurveID{tls.X25519}
			}
			b.ResetTimer()
			start, cpu0 := time.Now(), cpuTime()
			for i := 0; i < b.N; i++ {
				c1, c2 := net.Pipe()
				errc := make(chan error, 1)
				go func() {
					tc := tls.Client(c2, cc)
					err := tc.Handshake()
					if err == nil {
						var one [1]byte
						_, err = io.ReadFull(tc, one[:])
					}
					c2.Close()
					errc <- err
				}()
				sc := tls.Server(c1, srv)
				err := sc.Handshake()
				if err == nil {
					_, err = sc.Write([]byte{1})
				}
				if cerr := <-errc; err == nil {
					err = cerr
				}
				c1.Close()
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "handshakes/s")
			// Both ends' CPU: on a shared machine the wall clock lies.
			b.ReportMetric(float64(b.N)/(cpuTime()-cpu0).Seconds(), "handshakes/cpu-s")
		})
	}
}

// BenchmarkHandshakeServer: the server side alone. Clients (4 concurrent)
// run in a child process over loopback TCP; handshakes/cpu-s is handshakes
// per second of this process's CPU time (user+system), i.e. per server
// core-second, the figure to compare with other servers. Pin the two
// processes apart: taskset -c 0 go test -cpu 1 … with
// GATEHOUSE_BENCH_CLIENT_CPUS=1 for the client process.
func BenchmarkHandshakeServer(b *testing.B) {
	srv, _, files := benchSetup(b)
	for _, curve := range []string{"default", "x25519"} {
		b.Run(curve, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			const conc = 4
			total := (b.N + conc - 1) / conc * conc
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			if cpus := os.Getenv("GATEHOUSE_BENCH_CLIENT_CPUS"); cpus != "" {
				// The child inherits the server's pinning otherwise.
				cmd = exec.Command("taskset", "-c", cpus, os.Args[0], "-test.run=^$")
			}
			cmd.Env = append(os.Environ(),
				benchClientEnv+"="+ln.Addr().String(),
				"GATEHOUSE_BENCH_N="+strconv.Itoa(total),
				"GATEHOUSE_BENCH_CONC="+strconv.Itoa(conc),
				"GATEHOUSE_BENCH_CERT="+files["cert"],
				"GATEHOUSE_BENCH_KEY="+files["key"],
				"GATEHOUSE_BENCH_CA="+files["ca"],
				"GATEHOUSE_BENCH_CURVE="+curve)
			cmd.Stderr = os.Stderr
			b.ResetTimer()
			cpu0, t0 := cpuTime(), time.Now()
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			childErr := make(chan error, 1)
			go func() {
				err := cmd.Wait()
				if err != nil {
					ln.Close() // unblock Accept
				}
				childErr <- err
			}()
			var wg sync.WaitGroup
			var mu sync.Mutex
			var failed error
			for i := 0; i < total; i++ {
				c, err := ln.Accept()
				if err != nil {
					break
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					sc := tls.Server(c, srv)
					err := sc.Handshake()
					if err == nil {
						_, err = sc.Write([]byte{1})
					}
					sc.Close()
					if err != nil {
						mu.Lock()
						failed = err
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if err := <-childErr; err != nil {
				b.Fatalf("client process: %v", err)
			}
			elapsed, cpu := time.Since(t0), cpuTime()-cpu0
			b.StopTimer()
			if failed != nil {
				b.Fatal(failed)
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "handshakes/s")
			b.ReportMetric(float64(total)/cpu.Seconds(), "handshakes/cpu-s")
		})
	}
}

func benchClient() error {
	addr := os.Getenv(benchClientEnv)
	n, err := strconv.Atoi(os.Getenv("GATEHOUSE_BENCH_N"))
	if err != nil {
		return err
	}
	conc, _ := strconv.Atoi(os.Getenv("GATEHOUSE_BENCH_CONC"))
	if conc < 1 {
		conc = 1
	}
	pair, err := tls.LoadX509KeyPair(os.Getenv("GATEHOUSE_BENCH_CERT"), os.Getenv("GATEHOUSE_BENCH_KEY"))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(os.Getenv("GATEHOUSE_BENCH_CA"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{RootCAs: pool, ServerName: "gw.example", Certificates: []tls.Certificate{pair}}
	if os.Getenv("GATEHOUSE_BENCH_CURVE") == "x25519" {
		cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	}
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	per := (n + conc - 1) / conc
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				c, err := tls.Dial("tcp", addr, cfg)
				if err == nil {
					var one [1]byte
					_, err = io.ReadFull(c, one[:])
					c.Close()
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
