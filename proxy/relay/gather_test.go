package relay_test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

type byteCounter struct{ out int64 }

func (b *byteCounter) Count(in bool, n int) {
	if !in {
		b.out += int64(n)
	}
}

// gatherPair is a TLS client and server over loopback, the server over a
// CountingConn as the proxy's are, the handshake done; the client's
// reads go to got.
func gatherPair(t *testing.T) (server *tls.Conn, cnt *byteCounter, got chan []byte) {
	cert, pool := serverCert()
	c, s := testkit.TCPPair(t)
	s.(*net.TCPConn).SetWriteBuffer(4 << 20)
	cnt = &byteCounter{}
	client := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "relay.example",
		CipherSuites: []uint16{tls.TLS_AES_128_GCM_SHA256}})
	server = tls.Server(relay.NewCountingConn(s, cnt, nil), &tls.Config{Certificates: []tls.Certificate{cert}})
	errc := make(chan error, 1)
	go func() { errc <- server.Handshake() }()
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	got = make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(client)
		got <- b
	}()
	t.Cleanup(func() { client.Close(); server.Close() })
	return server, cnt, got
}

// writeSyscalls returns how many write system calls (write, writev, …)
// this thread made: the caller locks its OS thread.
func writeSyscalls(t *testing.T) int {
	b, err := os.ReadFile("/proc/thread-self/io")
	if err != nil {
		t.Fatalf("task I/O accounting: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "syscw: "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no syscw in /proc/thread-self/io")
	return 0
}

// TestWriteGatheredOneSyscall: a 32 KiB write (a relay's read) is two TLS
// records, which crypto/tls writes with one system call each; through
// WriteGathered both leave in one, and the client reads every byte.
func TestWriteGatheredOneSyscall(t *testing.T) {
	server, cnt, got := gatherPair(t)
	// crypto/tls starts a connection with small records, full ones
	// after 128 KiB: past those, a 32 KiB write is two records.
	warm := make([]byte, 128<<10)
	rand.Read(warm)
	if _, err := server.Write(warm); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 2*relay.BufferSize)
	rand.Read(data)
	half := data[:relay.BufferSize]
	cnt.out = 0
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	// The split this fixes: two records, two system calls.
	w0 := writeSyscalls(t)
	if _, err := server.Write(half); err != nil {
		t.Fatal(err)
	}
	if n := writeSyscalls(t) - w0; n != 2 {
		t.Fatalf("tls.Conn.Write of 32 KiB made %d write system calls, want 2 (one per record)", n)
	}
	w0 = writeSyscalls(t)
	n, err := relay.WriteGathered(server, data[relay.BufferSize:])
	if err != nil || n != relay.BufferSize {
		t.Fatalf("WriteGathered: %d, %v", n, err)
	}
	if n := writeSyscalls(t) - w0; n != 1 {
		t.Fatalf("WriteGathered of 32 KiB made %d write system calls, want 1", n)
	}
	counted := cnt.out
	server.Close()
	if b := <-got; !bytes.Equal(b, append(warm, data...)) {
		t.Fatalf("client read %d bytes, not the %d written", len(b), len(warm)+len(data))
	}
	// 4 records of 16 KiB, each with 22 bytes of TLS 1.3 framing.
	if want := int64(len(data) + 4*22); counted != want {
		t.Fatalf("counted %d bytes out, want %d", counted, want)
	}
}

// TestWriteGatheredSizes: writes of every shape around the record and
// buffer sizes arrive whole and in order, small ones written as they
// are.
func TestWriteGatheredSizes(t *testing.T) {
	server, _, got := gatherPair(t)
	var all []byte
	for _, n := range []int{1, 16 << 10, 16<<10 + 1, 32 << 10, 32<<10 + 100, 64 << 10, 100 << 10, 300} {
		b := make([]byte, n)
		rand.Read(b)
		all = append(all, b...)
		if w, err := relay.WriteGathered(server, b); err != nil || w != n {
			t.Fatalf("write %d: %d, %v", n, w, err)
		}
	}
	server.Close()
	if b := <-got; !bytes.Equal(b, all) {
		t.Fatalf("client read %d bytes, not the %d written", len(b), len(all))
	}
}
