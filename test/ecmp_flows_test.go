package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// A flow is one long-lived connection through the router that exchanges a
// byte with its node every 50 ms, as a terminal session or a keep-alive
// client does. The node names itself first, so the flow knows where the
// router sent it; when the router later sends its packets to another node,
// that node has no socket for them and resets the connection.
type flow struct {
	node string
	conn net.Conn

	mu      sync.Mutex
	lastOK  time.Time // when the last round trip that succeeded began
	brokeAt time.Time
	err     error
}

// flowSet runs flows until stop.
type flowSet struct {
	flows []*flow
	done  chan struct{}
	wg    sync.WaitGroup
}

// flowPeriod is the pause between two round trips of a flow.
const flowPeriod = 50 * time.Millisecond

// startFlows opens n flows with dial; each must name its node within 5 s.
func startFlows(t *testing.T, n int, dial func(context.Context) (net.Conn, error)) *flowSet {
	t.Helper()
	fs := &flowSet{done: make(chan struct{})}
	t.Cleanup(fs.stop)
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := dial(ctx)
		cancel()
		if err != nil {
			t.Fatalf("open flow %d: %v", len(fs.flows), err)
		}
		name, err := readName(c)
		if err != nil {
			c.Close()
			t.Fatalf("flow %d: the node did not name itself: %v", len(fs.flows), err)
		}
		f := &flow{node: name, conn: c, lastOK: time.Now()}
		fs.flows = append(fs.flows, f)
		fs.wg.Add(1)
		go func() { defer fs.wg.Done(); f.run(fs.done) }()
	}
	return fs
}

// readName reads the node's name line byte by byte, so nothing the flow
// exchanges later is buffered away.
func readName(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var b strings.Builder
	one := make([]byte, 1)
	for b.Len() < 64 {
		if _, err := io.ReadFull(c, one); err != nil {
			return "", err
		}
		if one[0] == '\n' {
			return b.String(), nil
		}
		b.WriteByte(one[0])
	}
	return "", errors.New("name line too long")
}

func (f *flow) run(done <-chan struct{}) {
	buf := []byte{'x'}
	tick := time.NewTicker(flowPeriod)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		start := time.Now()
		f.conn.SetDeadline(start.Add(5 * time.Second))
		_, err := f.conn.Write(buf)
		if err == nil {
			_, err = io.ReadFull(f.conn, buf)
		}
		f.mu.Lock()
		if err != nil {
			f.err, f.brokeAt = err, time.Now()
			f.mu.Unlock()
			f.conn.Close()
			return
		}
		f.lastOK = start
		f.mu.Unlock()
	}
}

func (f *flow) state() (ok time.Time, broke bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastOK, f.err != nil
}

// settled waits until every flow has either completed a round trip that
// began after at or broken: then each flow's fate under the routes of at
// is known (a round trip after the change either reached its own node
// again or was reset by another).
func (fs *flowSet) settled(t *testing.T, at time.Time, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		waiting := 0
		for _, f := range fs.flows {
			if ok, broke := f.state(); !broke && !ok.After(at) {
				waiting++
			}
		}
		if waiting == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d flows neither answered nor broke within %v", waiting, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tally counts, per node, the flows that are alive and those that broke.
type tally map[string]*[2]int // node → {alive, broken}

func (fs *flowSet) tally() tally {
	out := tally{}
	for _, f := range fs.flows {
		if out[f.node] == nil {
			out[f.node] = &[2]int{}
		}
		_, broke := f.state()
		if broke {
			out[f.node][1]++
		} else {
			out[f.node][0]++
		}
	}
	return out
}

// survivors sums the flows of every node but lost: total and broken.
func (tl tally) survivors(lost string) (total, broken int) {
	for n, c := range tl {
		if n != lost {
			total += c[0] + c[1]
			broken += c[1]
		}
	}
	return total, broken
}

func (tl tally) String() string {
	var nodes []string
	for n := range tl {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	var b strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&b, "%s %d alive/%d broken; ", n, tl[n][0], tl[n][1])
	}
	return strings.TrimSuffix(b.String(), "; ")
}

func (fs *flowSet) stop() {
	select {
	case <-fs.done:
		return
	default:
	}
	close(fs.done)
	for _, f := range fs.flows {
		f.conn.Close()
	}
	fs.wg.Wait()
}

// serveEcho answers each connection with name and a newline, then echoes.
func serveEcho(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			if _, err := io.WriteString(c, name+"\n"); err == nil {
				io.Copy(c, c)
			}
		}()
	}
}
