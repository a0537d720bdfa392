package relay_test

import (
	"bufio"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// ended returns an end function for a Timer and the channel it reports on.
func ended() (func(error), chan error) {
	ch := make(chan error, 2)
	return func(err error) { ch <- err }, ch
}

func waitEnd(t *testing.T, ch chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(within):
		t.Fatalf("timer did not end the session within %v", within)
		return nil
	}
}

func TestTimerIdle(t *testing.T) {
	end, ch := ended()
	tm := relay.NewTimer(time.Now(), 200*time.Millisecond, 0, end)
	defer tm.Stop()
	if err := waitEnd(t, ch, 10*time.Second); !errors.Is(err, relay.ErrIdle) {
		t.Fatalf("ended with %v, want idle", err)
	}
}

// TestTimerTouchKeepsAlive: traffic more often than the idle timeout
// keeps a session open past several idle periods.
func TestTimerTouchKeepsAlive(t *testing.T) {
	end, ch := ended()
	tm := relay.NewTimer(time.Now(), time.Second, 0, end)
	defer tm.Stop()
	for range 30 {
		tm.Touch()
		select {
		case err := <-ch:
			t.Fatalf("active session ended: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestTimerMaxSession(t *testing.T) {
	end, ch := ended()
	tm := relay.NewTimer(time.Now(), time.Hour, 300*time.Millisecond, end)
	defer tm.Stop()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // busy all along: only the length can end it
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				tm.Touch()
			}
		}
	}()
	if err := waitEnd(t, ch, 10*time.Second); !errors.Is(err, relay.ErrMaxSession) {
		t.Fatalf("ended with %v, want maximum length", err)
	}
}

// TestTimerSet: limits lowered while a session runs apply to it at once,
// including one it already exceeds; limits turned off stop the timer.
func TestTimerSet(t *testing.T) {
	t.Run("lowered max already exceeded", func(t *testing.T) {
		end, ch := ended()
		tm := relay.NewTimer(time.Now().Add(-time.Minute), 0, time.Hour, end)
		defer tm.Stop()
		tm.Set(0, 30*time.Second)
		if err := waitEnd(t, ch, 10*time.Second); !errors.Is(err, relay.ErrMaxSession) {
			t.Fatalf("ended with %v", err)
		}
	})
	t.Run("idle turned on", func(t *testing.T) {
		end, ch := ended()
		tm := relay.NewTimer(time.Now(), 0, 0, end)
		defer tm.Stop()
		tm.Set(200*time.Millisecond, 0)
		if err := waitEnd(t, ch, 10*time.Second); !errors.Is(err, relay.ErrIdle) {
			t.Fatalf("ended with %v", err)
		}
	})
	t.Run("turned off", func(t *testing.T) {
		end, ch := ended()
		tm := relay.NewTimer(time.Now(), 200*time.Millisecond, 300*time.Millisecond, end)
		defer tm.Stop()
		tm.Set(0, 0)
		select {
		case err := <-ch:
			t.Fatalf("session ended after its limits were turned off: %v", err)
		case <-time.After(time.Second):
		}
	})
}

// TestPipeTimedIdle relays a real TCP session: while bytes flow it stays,
// once both sides fall silent the timer closes both connections.
func TestPipeTimedIdle(t *testing.T) {
	client, front := testkit.TCPPair(t)
	back, backend := testkit.TCPPair(t)
	why := make(chan error, 1)
	tm := relay.NewTimer(time.Now(), 500*time.Millisecond, 0, func(err error) {
		why <- err
		front.Close()
		back.Close()
	})
	defer tm.Stop()
	done := make(chan struct{})
	go func() {
		relay.PipeTimed(front, back, tm)
		close(done)
	}()
	go io.Copy(backend, backend) // echo
	br := bufio.NewReader(client)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	for range 8 { // 8 × 200 ms: longer than the idle timeout, never idle
		io.WriteString(client, "ping\n")
		if line, err := br.ReadString('\n'); line != "ping\n" {
			t.Fatalf("echo %q %v", line, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	select {
	case err := <-why:
		t.Fatalf("busy relay ended: %v", err)
	default:
	}
	if err := waitEnd(t, why, 10*time.Second); !errors.Is(err, relay.ErrIdle) {
		t.Fatalf("ended with %v", err)
	}
	<-done
	if _, err := br.ReadString('\n'); err == nil {
		t.Error("client connection still open after the idle timeout")
	}
}
