package tunnel

import (
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"sort"
	"testing"
	"time"
)

// The tunnel's own cost beside a direct TLS connection on loopback: a
// 1 KiB request answered with 1 KiB (p50 and p99 round trip), and bulk
// throughput one way. Run: go test ./tunnel -run XXX -bench . -benchtime 2000x

const benchMsg = 1 << 10

// echo answers every read with the same bytes.
func echo(c io.ReadWriter) error {
	_, err := io.Copy(c, c)
	return err
}

func benchRoundTrips(b *testing.B, c io.ReadWriter) {
	msg := make([]byte, benchMsg)
	buf := make([]byte, benchMsg)
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(2 * benchMsg)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

func benchBulk(b *testing.B, w io.WriteCloser, done <-chan int64) {
	chunk := make([]byte, 32<<10)
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range b.N {
		if _, err := w.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	w.Close()
	<-done
}

func benchRig(b *testing.B, serve func(*Conn) error) *rig {
	r := newRig(b, nil)
	r.connector("acme", r.connCA["acme"], 1, func(c *ConnectorConfig) { c.Serve = serve })
	r.waitTunnels("acme", 1)
	return r
}

func BenchmarkRoundTrip1KiB(b *testing.B) {
	b.Run("direct-tls", func(b *testing.B) {
		c := directTLS(b, func(c net.Conn) { echo(c) })
		benchRoundTrips(b, c)
	})
	b.Run("tunnel", func(b *testing.B) {
		r := benchRig(b, func(c *Conn) error { return echo(c) })
		st, err := r.gw.Open(r.header("acme"))
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		benchRoundTrips(b, st)
	})
}

func BenchmarkBulk(b *testing.B) {
	b.Run("direct-tls", func(b *testing.B) {
		done := make(chan int64, 1)
		c := directTLS(b, func(c net.Conn) { n, _ := io.Copy(io.Discard, c); done <- n })
		benchBulk(b, c, done)
	})
	b.Run("tunnel", func(b *testing.B) {
		done := make(chan int64, 1)
		r := benchRig(b, func(c *Conn) error { n, err := io.Copy(io.Discard, c); done <- n; return err })
		st, err := r.gw.Open(r.header("acme"))
		if err != nil {
			b.Fatal(err)
		}
		benchBulk(b, writeCloser{st}, done)
	})
}

// writeCloser half-closes a stream, so the far end sees the end of the
// bulk transfer.
type writeCloser struct{ *Stream }

func (w writeCloser) Close() error { return w.CloseWrite() }

// directTLS is a TLS 1.3 connection on loopback to serve, with the same
// kind of certificates as the tunnel's.
func directTLS(b *testing.B, serve func(net.Conn)) *tls.Conn {
	r := newRig(b, nil)
	srv := r.gwCA.Server(b, "127.0.0.1")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srv.TLS}, MinVersion: tls.VersionTLS13})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: r.gwCA.Pool(), MinVersion: tls.VersionTLS13})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkIdleStreamMemory reports the heap one idle stream takes, both
// ends together (the gateway's and the connector's, in this process), with
// 1,000 streams open on one tunnel.
func BenchmarkIdleStreamMemory(b *testing.B) {
	const n = 1000
	hold := make(chan struct{})
	r := newRig(b, func(c *GatewayConfig) { c.StreamsPerTunnel = n; c.StreamsPerTenant = n })
	r.connector("acme", r.connCA["acme"], 1, func(c *ConnectorConfig) {
		// The connector answers the gateway at Serve's first read or
		// write: answer, then hold the session idle.
		c.Serve = func(conn *Conn) error { conn.Write(nil); <-hold; return nil }
	})
	r.waitTunnels("acme", 1)
	defer close(hold)
	var before, after runtime.MemStats
	for range b.N {
		runtime.GC()
		runtime.ReadMemStats(&before)
		streams := make([]*Stream, 0, n)
		for range n {
			st, err := r.gw.Open(r.header("acme"))
			if err != nil {
				b.Fatal(err)
			}
			if err := st.Accepted(); err != nil {
				b.Fatal(err)
			}
			streams = append(streams, st)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n/1024, "heap-KiB/stream")
		b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n/1024, "stack-KiB/stream")
		for _, st := range streams {
			st.Close()
		}
	}
}
