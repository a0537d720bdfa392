package relay_test

import (
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

type counts struct{ in, out atomic.Int64 }

func (c *counts) Count(in bool, n int) {
	if in {
		c.in.Add(int64(n))
	} else {
		c.out.Add(int64(n))
	}
}

// TestPipeHalfClose relays client ⇄ backend: the client sends a request and
// half-closes; the backend answers only after it saw the end of the
// request, and the answer still reaches the client.
func TestPipeHalfClose(t *testing.T) {
	client, front := testkit.TCPPair(t)
	back, backend := testkit.TCPPair(t)
	var cnt counts
	var closes atomic.Int64
	fc := relay.NewCountingConn(front, &cnt, func() { closes.Add(1) })
	type res struct{ ab, ba int64 }
	done := make(chan res, 1)
	go func() {
		ab, ba, err := relay.Pipe(fc, back)
		if err != nil {
			t.Errorf("pipe: %v", err)
		}
		done <- res{ab, ba}
	}()
	go func() {
		req, _ := io.ReadAll(backend) // until the relayed FIN
		backend.Write(append([]byte("got "), req...))
		backend.Close()
	}()
	payload := bytes.Repeat([]byte("x"), 100_000)
	client.Write(payload)
	client.(*net.TCPConn).CloseWrite()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(answer, append([]byte("got "), payload...)) {
		t.Fatalf("answer of %d bytes, want %d", len(answer), len(payload)+4)
	}
	r := <-done
	if r.ab != int64(len(payload)) || r.ba != int64(len(payload)+4) {
		t.Errorf("pipe counted %d/%d", r.ab, r.ba)
	}
	if cnt.in.Load() != r.ab || cnt.out.Load() != r.ba {
		t.Errorf("counting conn saw %d in, %d out; pipe %d/%d", cnt.in.Load(), cnt.out.Load(), r.ab, r.ba)
	}
	fc.Close()
	if closes.Load() != 1 {
		t.Errorf("close hook ran %d times, want 1", closes.Load())
	}
}

// TestAcceptAdmit: Admit decides in the accept loop; a connection it
// refuses is closed at once, and Accept waits for the admitted ones.
func TestAcceptAdmit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var admitted, refused atomic.Int64
	hold := make(chan struct{})
	var handled sync.WaitGroup
	handled.Add(2)
	done := make(chan error, 1)
	go func() {
		done <- relay.Accept(ln, relay.AcceptConfig{Admit: func(c net.Conn) func() {
			if admitted.Load() == 2 {
				refused.Add(1)
				return nil
			}
			admitted.Add(1)
			return func() {
				handled.Done()
				<-hold
				c.Close()
			}
		}})
	}()
	var conns []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	handled.Wait()
	third, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	third.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("refused connection: read %v, want EOF", err)
	}
	if refused.Load() != 1 {
		t.Errorf("refused %d, want 1", refused.Load())
	}
	ln.Close()
	select {
	case err := <-done:
		t.Fatalf("Accept returned (%v) while connections were still served", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(hold)
	if err := <-done; err != nil {
		t.Errorf("Accept: %v", err)
	}
	for _, c := range conns {
		c.Close()
	}
}
