package tunnel

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs/certstest"
)

// countingConn records the size of every write the multiplexer makes on
// the tunnel's TLS connection: each is at least one TLS record and one
// system call.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte // the first 12 bytes of each write, and its length
	sizes  []int
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, append([]byte(nil), b[:min(len(b), frameHeaderSize)]...))
	c.sizes = append(c.sizes, len(b))
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// A data frame's header and body go to the TLS connection in one write,
// not as a 12-byte record of their own followed by the body; the bytes
// arrive whole, and window updates still flow (1 MiB is four windows).
func TestDataFrameIsOneWrite(t *testing.T) {
	ca := certstest.NewCA(t, "wire")
	srv := ca.Server(t, "127.0.0.1")
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srv.TLS}, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := yamuxConfig(time.Second, 5*time.Second, slog.New(slog.DiscardHandler))
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	counted := make(chan *countingConn, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		cc := &countingConn{Conn: c}
		counted <- cc
		sess, err := muxServer(cc, cfg)
		if err != nil {
			errc <- err
			return
		}
		defer sess.Close()
		st, err := sess.OpenStream()
		if err != nil {
			errc <- err
			return
		}
		if _, err := st.Write(payload); err != nil {
			errc <- err
			return
		}
		errc <- st.Close()
		<-sess.CloseChan()
	}()
	tc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := muxClient(tc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	st, err := sess.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(st)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read %d bytes (%v), want the %d written", len(got), err, len(payload))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	cc := <-counted
	cc.mu.Lock()
	defer cc.mu.Unlock()
	data := 0
	for i, w := range cc.writes {
		if len(w) < frameHeaderSize || w[1] != frameTypeData {
			continue
		}
		length := int(binary.BigEndian.Uint32(w[8:12]))
		if length > 0 && cc.sizes[i] != frameHeaderSize+length {
			t.Fatalf("write %d: a data frame of %d bytes went out as a write of %d", i, length, cc.sizes[i])
		}
		data += length
	}
	if data != len(payload) {
		t.Fatalf("data frames carried %d bytes in whole writes, want %d (%d writes)", data, len(payload), len(cc.sizes))
	}
}
