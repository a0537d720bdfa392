package testkit

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// TestLogBuffer: concurrent loggers lose no line, Count finds lines by
// message, and Discard drops lines while it is on.
func TestLogBuffer(t *testing.T) {
	var b LogBuffer
	log := slog.New(slog.NewTextHandler(&b, nil))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				log.Info("hello world", "n", 1)
			}
		}()
	}
	wg.Wait()
	if n := b.Count("hello world"); n != 800 {
		t.Errorf("Count = %d, want 800", n)
	}
	b.Discard(true)
	log.Info("dropped")
	b.Discard(false)
	log.Info("kept")
	if b.Count("dropped") != 0 || b.Count("kept") != 1 {
		t.Errorf("after Discard: %d lines dropped, %d kept; want 0 and 1", b.Count("dropped"), b.Count("kept"))
	}
}

// TestTCPPair: what one end writes the other reads, and closing one end
// is an EOF at the other.
func TestTCPPair(t *testing.T) {
	c, s := TCPPair(t)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	c.Close()
	if _, err := s.Read(buf); err != io.EOF {
		t.Errorf("after close: %v, want EOF", err)
	}
}

// TestWaitLines: a line written while WaitLines waits is found; one never
// written gives nil.
func TestWaitLines(t *testing.T) {
	var b LogBuffer
	go func() {
		time.Sleep(50 * time.Millisecond)
		b.Write([]byte("one\ntwo three\n"))
	}()
	if got := b.WaitLines("three"); len(got) != 2 || got[1] != "two three" {
		t.Errorf("WaitLines = %q", got)
	}
	if b.Occurrences("o") != 2 {
		t.Errorf("Occurrences(o) = %d, want 2", b.Occurrences("o"))
	}
}
