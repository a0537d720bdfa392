package proxy_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// fixedBackend answers every request with size bytes.
func fixedBackend(b *testing.B, size int) *httptest.Server {
	body := make([]byte, size)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(body)
	}))
	b.Cleanup(srv.Close)
	return srv
}

func fetch(b *testing.B, c *http.Client, url string, want int) {
	resp, err := c.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || int(n) != want {
		b.Fatalf("status %d, %d bytes", resp.StatusCode, n)
	}
}

// cpuTime is the process's user+system CPU time. The benchmarks run client,
// proxy and backend in one process, so it is the whole chain's cost.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds the CPU share and the rate per CPU-second to a benchmark.
func reportCPU(b *testing.B, cpu0 time.Duration, perOp float64, unit string) {
	cpu := (cpuTime() - cpu0).Seconds()
	if cpu <= 0 {
		return
	}
	b.ReportMetric(cpu/b.Elapsed().Seconds(), "cpu-cores")
	b.ReportMetric(float64(b.N)*perOp/cpu, unit+"/cpu-s")
}

// BenchmarkKeepAlive1KiB measures one keep-alive client fetching 1 KiB,
// directly from the backend and through the proxy (mutual TLS on the
// client side, plain HTTP to the backend). The difference of the p99
// figures is the latency the proxy adds.
func BenchmarkKeepAlive1KiB(b *testing.B) {
	be := fixedBackend(b, 1024)
	h := newHarness(b, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: be.URL}))
	h.access.Discard(true)
	for _, mode := range []string{"direct", "proxy", "proxy-h2"} {
		b.Run(mode, func(b *testing.B) {
			c := &http.Client{Transport: &http.Transport{}}
			url := be.URL + "/"
			switch mode {
			case "proxy":
				c = h.client(h.pki.acme, false)
				url = "https://" + h.addr("web") + "/"
			case "proxy-h2":
				c = h.client(h.pki.acme, true)
				url = "https://" + h.addr("web") + "/"
			}
			fetch(b, c, url, 1024) // connect and handshake outside the timing
			lat := make([]time.Duration, 0, b.N)
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				fetch(b, c, url, 1024)
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			reportCPU(b, cpu0, 1, "req")
		})
	}
}

// BenchmarkKeepAlive1KiBParallel is the request rate with several
// keep-alive clients at once.
func BenchmarkKeepAlive1KiBParallel(b *testing.B) {
	be := fixedBackend(b, 1024)
	h := newHarness(b, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: be.URL}))
	h.access.Discard(true)
	c := h.client(h.pki.acme, false)
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	url := "https://" + h.addr("web") + "/"
	fetch(b, c, url, 1024)
	b.SetParallelism(4)
	cpu0 := cpuTime()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			fetch(b, c, url, 1024)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	reportCPU(b, cpu0, 1, "req")
}

// BenchmarkBulk1MiB is the throughput of 1 MiB responses through the proxy.
func BenchmarkBulk1MiB(b *testing.B) {
	const size = 1 << 20
	be := fixedBackend(b, size)
	h := newHarness(b, testLimits(), listener("web", policy.ProtoHTTPS,
		policy.Route{Tenant: "acme", Backend: be.URL}))
	h.access.Discard(true)
	for _, mode := range []string{"direct", "proxy"} {
		b.Run(mode, func(b *testing.B) {
			c := &http.Client{Transport: &http.Transport{}}
			url := be.URL + "/"
			if mode == "proxy" {
				c = h.client(h.pki.acme, false)
				url = "https://" + h.addr("web") + "/"
			}
			fetch(b, c, url, size)
			b.SetBytes(size)
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				fetch(b, c, url, size)
			}
			b.ReportMetric(float64(b.N)*size/(1<<20)/b.Elapsed().Seconds(), "MiB/s")
			reportCPU(b, cpu0, 1, "MiB")
		})
	}
}
