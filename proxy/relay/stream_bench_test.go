package relay_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// serverCert is a self-signed P-256 certificate for relay.example.
var serverCert = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"relay.example"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
})

// tlsPair is a client and a server TLS connection over loopback, the
// handshake done (TLS 1.3, AES-128-GCM).
func tlsPair(tb testing.TB) (client, server *tls.Conn) {
	cert, pool := serverCert()
	c, s := testkit.TCPPair(tb)
	client = tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "relay.example",
		CipherSuites: []uint16{tls.TLS_AES_128_GCM_SHA256}})
	server = tls.Server(s, &tls.Config{Certificates: []tls.Certificate{cert}})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		tb.Fatal(err)
	}
	if err := <-errc; err != nil {
		tb.Fatal(err)
	}
	return client, server
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkStreamTLS is the relay of a TLS-terminated stream: a client
// writes 64 KiB at a time over TLS, the relay decrypts and copies to a
// plain backend that discards. Client, relay and backend share the
// process, so MiB/cpu-s is the whole chain's.
func BenchmarkStreamTLS(b *testing.B) {
	client, front := tlsPair(b)
	back, backend := testkit.TCPPair(b)
	go relay.Pipe(front, back)
	go io.Copy(io.Discard, backend)
	chunk := make([]byte, 64<<10)
	b.SetBytes(int64(len(chunk)))
	cpu0 := cpuNow()
	b.ResetTimer()
	for range b.N {
		if _, err := client.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)*float64(len(chunk))/(1<<20)/(cpuNow()-cpu0).Seconds(), "MiB/cpu-s")
	client.Close()
	backend.Close()
}

// BenchmarkStreamTLSDown is the other direction: a plain backend writes
// 64 KiB at a time, the relay encrypts it to the TLS client, which reads.
func BenchmarkStreamTLSDown(b *testing.B) {
	client, front := tlsPair(b)
	back, backend := testkit.TCPPair(b)
	go relay.Pipe(front, back)
	chunk := make([]byte, 64<<10)
	total := int64(b.N) * int64(len(chunk))
	go func() {
		for range b.N {
			if _, err := backend.Write(chunk); err != nil {
				return
			}
		}
	}()
	b.SetBytes(int64(len(chunk)))
	cpu0 := cpuNow()
	b.ResetTimer()
	if _, err := io.CopyN(io.Discard, client, total); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(total)/(1<<20)/(cpuNow()-cpu0).Seconds(), "MiB/cpu-s")
	client.Close()
	backend.Close()
}

// BenchmarkEchoTLS is the terminal pattern: the client sends 256 bytes
// over TLS, the backend echoes them, the client waits for the echo.
func BenchmarkEchoTLS(b *testing.B) {
	client, front := tlsPair(b)
	back, backend := testkit.TCPPair(b)
	go relay.Pipe(front, back)
	go io.Copy(backend, backend)
	msg := make([]byte, 256)
	got := make([]byte, 256)
	cpu0 := cpuNow()
	b.ResetTimer()
	for range b.N {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, got); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/(cpuNow()-cpu0).Seconds(), "trips/cpu-s")
	client.Close()
	backend.Close()
}
