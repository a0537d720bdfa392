package test

import (
	"io"
	"net/http"
	"slices"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTunnelThroughput measures the tunnel's cost in bulk throughput
// in a way a loaded machine does not distort: the appliance's path and the
// gateway + connector's are run interleaved (one round is both, in
// alternating order), each for the same downloads, and each round's
// figures are taken from the wall clock and from the CPU time of the whole
// process (getrusage: user + system). Everything (client, gateway,
// connector, backend) is in this process, so bytes per CPU-second is the
// fair figure on a machine whose other load steals wall time: it counts
// the tunnel's extra TLS layer, which on separate hosts would be split
// between the gateway and the connector. The medians over the rounds are
// reported, and the cost of the tunnel against the appliance in percent.
// Run:
//
//	go test ./test -run XXX -bench TunnelThroughput -benchtime 9x
func BenchmarkTunnelThroughput(b *testing.B) {
	p := startBenchPaths(b)
	const downloads = 8                     // of p.bulk bytes each, per path and round
	type sample struct{ wall, cpu float64 } // MiB/s, MiB per CPU-second
	clients := map[string]*http.Client{}
	for _, addr := range []string{p.appliance, p.gateway} {
		clients[addr] = &http.Client{Transport: &http.Transport{TLSClientConfig: p.tls, MaxIdleConnsPerHost: 1}}
		fetch(b, clients[addr], addr, p.bulk) // the connection, warm
	}
	run := func(addr string) sample {
		cpu0, t0 := cpuTime(b), time.Now()
		for range downloads {
			fetch(b, clients[addr], addr, p.bulk)
		}
		cpu, wall := cpuTime(b)-cpu0, time.Since(t0)
		mib := float64(downloads*p.bulk) / (1 << 20)
		return sample{wall: mib / wall.Seconds(), cpu: mib / cpu.Seconds()}
	}
	var direct, tunnel []sample
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			direct = append(direct, run(p.appliance))
			tunnel = append(tunnel, run(p.gateway))
		} else {
			tunnel = append(tunnel, run(p.gateway))
			direct = append(direct, run(p.appliance))
		}
	}
	b.StopTimer()
	median := func(s []sample, f func(sample) float64) float64 {
		v := make([]float64, len(s))
		for i := range s {
			v[i] = f(s[i])
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	wall := func(s sample) float64 { return s.wall }
	cpu := func(s sample) float64 { return s.cpu }
	dw, tw, dc, tc := median(direct, wall), median(tunnel, wall), median(direct, cpu), median(tunnel, cpu)
	b.ReportMetric(dw, "direct-MiB/s")
	b.ReportMetric(tw, "tunnel-MiB/s")
	b.ReportMetric(dc, "direct-MiB/cpu-s")
	b.ReportMetric(tc, "tunnel-MiB/cpu-s")
	b.ReportMetric(100*(1-tw/dw), "cost-wall-%")
	b.ReportMetric(100*(1-tc/dc), "cost-cpu-%")
}

// fetch downloads /bulk from addr and checks its length.
func fetch(b testing.TB, c *http.Client, addr string, size int) {
	resp, err := c.Get("https://" + addr + "/bulk")
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != int64(size) {
		b.Fatalf("%s: %d bytes of %d: %v", addr, n, size, err)
	}
}

// cpuTime is the CPU time this process used so far, user and system.
func cpuTime(b testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
