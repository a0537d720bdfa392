package test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// bulkBody is what the backend sends for /bulk: 1 MiB.
var bulkBody = bytes.Repeat([]byte("gatehouse"), (1<<20)/9)

// serverCPU is the CPU time (user + system) the daemon and its workers
// have used so far.
func serverCPU(t *testing.T, pids []int) time.Duration {
	t.Helper()
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		u, _ := strconv.ParseInt(f[11], 10, 64) // utime: field 14
		s, _ := strconv.ParseInt(f[12], 10, 64) // stime: field 15
		ticks += u + s
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// serverRSS is the resident memory of the daemon and its workers.
func serverRSS(t *testing.T, pids []int) int64 {
	t.Helper()
	var kb int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
				kb += n
			}
		}
	}
	return kb * 1024
}

// TestPrivsepBenchmark compares the single process (privsep off) with one
// and two workers, in the same run: full handshakes, keep-alive requests
// and 1 MiB transfers per second of the server's CPU (daemon and workers),
// and resident memory per idle TLS session. It reports and asserts
// nothing about speed; run it with GATEHOUSE_PRIVSEP_BENCH=1 (as root).
func TestPrivsepBenchmark(t *testing.T) {
	if os.Getenv("GATEHOUSE_PRIVSEP_BENCH") != "1" {
		t.Skip("a benchmark: GATEHOUSE_PRIVSEP_BENCH=1 runs it")
	}
	const (
		handshakes = 600
		keepalive  = 3000
		bulk       = 200
		idle       = 300
		clients    = 4
	)
	type figures struct{ hs, ka, bulk, idleBytes float64 }
	results := map[int]figures{}
	for _, workers := range []int{0, 1, 2} {
		d := startPrivsep(t, workers, "", nil, "")
		pids := []int{d.cmd.Process.Pid}
		if workers > 0 {
			for _, w := range d.status(t).Privsep.Workers {
				pids = append(pids, w.PID)
			}
		}
		tc := &tls.Config{RootCAs: d.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{d.client.TLS},
			ClientSessionCache: nil}
		// run does n requests over clients goroutines; fresh makes each a
		// new connection (a full handshake) and returns ops per CPU second.
		run := func(n int, path string, fresh bool) float64 {
			tr := &http.Transport{TLSClientConfig: tc, DisableKeepAlives: fresh, MaxIdleConnsPerHost: clients}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
			before := serverCPU(t, pids)
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for i := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := i; j < n; j += clients {
						resp, err := c.Get("https://" + d.listen + path)
						if err != nil {
							errs <- err
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}()
			}
			wg.Wait()
			close(errs)
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
			cpu := serverCPU(t, pids) - before
			return float64(n) / max(cpu.Seconds(), 0.01)
		}
		var f figures
		run(50, "/", false) // warm up
		f.hs = run(handshakes, "/", true)
		f.ka = run(keepalive, "/", false)
		f.bulk = run(bulk, "/bulk", false)
		base := serverRSS(t, pids)
		var conns []*tls.Conn
		for range idle {
			c, err := tls.Dial("tcp", d.listen, tc)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		time.Sleep(500 * time.Millisecond) // let the server finish the handshakes
		f.idleBytes = float64(serverRSS(t, pids)-base) / idle
		for _, c := range conns {
			c.Close()
		}
		results[workers] = f
		d.kill()
	}
	name := map[int]string{0: "single process", 1: "privsep, 1 worker", 2: "privsep, 2 workers"}
	t.Logf("%-20s %14s %14s %14s %12s", "", "handshakes/cs", "keep-alive/cs", "1MiB/cs", "B/idle sess")
	for _, w := range []int{0, 1, 2} {
		f := results[w]
		t.Logf("%-20s %14.0f %14.0f %14.1f %12.0f", name[w], f.hs, f.ka, f.bulk, f.idleBytes)
	}
	off, one, two := results[0], results[1], results[2]
	t.Logf("cost of privsep (1 worker vs single): handshakes %+.1f%%, keep-alive %+.1f%%, bulk %+.1f%%",
		100*(1-one.hs/off.hs), 100*(1-one.ka/off.ka), 100*(1-one.bulk/off.bulk))
	t.Logf("2 workers vs 1, per core-second: handshakes %.2f, keep-alive %.2f, bulk %.2f",
		two.hs/one.hs, two.ka/one.ka, two.bulk/one.bulk)
}
