package test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTunnelThroughput measures the tunnel's cost in bulk throughput
// in a way a loaded machine does not distort: the appliance's path and the
// gateway + connector's are run interleaved (one round is both, in
// alternating order), each for the same downloads, and each round's
// figures are taken from the wall clock and from the CPU time used
// (getrusage: user + system). The medians over the rounds are reported,
// and the tunnel's cost against the appliance in percent.
//
// "all": the client, gateway, connector and backend are all in this
// process, so bytes per CPU-second of everything is the figure a busy
// machine does not distort; it counts the tunnel's extra TLS layer at both
// its ends (on separate hosts, the connector's end runs inside the
// enterprise).
//
// "split": the connector runs as a process of its own. The gateway's
// figure is this process's CPU (client, gateway, backend) against the
// appliance's (client, appliance, backend): the cost on the gateway's
// side; "all" adds the connector process's CPU (from /proc). Run:
//
//	go test ./test -run XXX -bench TunnelThroughput -benchtime 9x
func BenchmarkTunnelThroughput(b *testing.B) {
	b.Run("all", func(b *testing.B) {
		measureThroughput(b, startBenchPaths(b, nil), 0)
	})
	b.Run("split", func(b *testing.B) {
		var pid int
		p := startBenchPaths(b, func(cfgPath string) {
			cmd := exec.Command(binary(b), "run", "-c", cfgPath)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
			pid = cmd.Process.Pid
		})
		measureThroughput(b, p, pid)
	})
}

// measureThroughput runs b.N rounds; child, when not 0, is the
// connector's process.
func measureThroughput(b *testing.B, p *benchPaths, child int) {
	const downloads = 8 // of p.bulk bytes each, per path and round
	// MiB per second of wall clock, per CPU-second of this process, and
	// of this process and the child.
	type sample struct{ wall, self, all float64 }
	clients := map[string]*http.Client{}
	for _, addr := range []string{p.appliance, p.gateway} {
		clients[addr] = &http.Client{Transport: &http.Transport{TLSClientConfig: p.tls, MaxIdleConnsPerHost: 1}}
		fetch(b, clients[addr], addr, p.bulk) // the connection, warm
	}
	run := func(addr string) sample {
		self0, child0, t0 := cpuTime(b), procCPU(b, child), time.Now()
		for range downloads {
			fetch(b, clients[addr], addr, p.bulk)
		}
		self, wall := cpuTime(b)-self0, time.Since(t0)
		all := self + procCPU(b, child) - child0
		mib := float64(downloads*p.bulk) / (1 << 20)
		return sample{wall: mib / wall.Seconds(), self: mib / self.Seconds(), all: mib / all.Seconds()}
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
	report := func(name string, f func(sample) float64) {
		d, t := median(direct, f), median(tunnel, f)
		b.ReportMetric(d, "direct-MiB/"+name)
		b.ReportMetric(t, "tunnel-MiB/"+name)
		b.ReportMetric(100*(1-t/d), "cost-"+name+"-%")
	}
	report("s", func(s sample) float64 { return s.wall })
	report("cpu-s", func(s sample) float64 { return s.all })
	if child != 0 {
		report("gw-cpu-s", func(s sample) float64 { return s.self })
	}
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

// procCPU is the CPU time process pid used so far, user and system, from
// /proc/pid/stat (in clock ticks of 10 ms); 0 for pid 0.
func procCPU(b testing.TB, pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command's closing parenthesis: state is the
	// first, utime and stime the 12th and 13th.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+1:]))
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
