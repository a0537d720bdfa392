package test

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestAccessLogStalledStdout: requests do not wait on the access log. The
// daemon's stdout is a pipe nobody reads while a keep-alive client sends
// more requests than the pipe holds lines; every request is answered, and
// at exit every line comes out whole (issue 21: the log is written
// buffered, off the request path, and flushed on shutdown).
func TestAccessLogStalledStdout(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	d, _, ca, client := startDaemonOut(t, w)
	w.Close() // the daemon holds its own copy

	// A pipe holds 64 KiB, about 200 access lines.
	const n = 1000
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS},
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for i := range n {
		resp, err := c.Get("https://" + d.listen + "/")
		if err != nil {
			t.Fatalf("request %d with stdout unread: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	tr.CloseIdleConnections()

	lines := make(chan []string, 1)
	go func() {
		var got []string
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			got = append(got, sc.Text())
		}
		lines <- got
	}()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon did not exit on SIGTERM:\n%s", d.out.String())
	}
	got := <-lines
	if len(got) != n {
		t.Errorf("%d access lines at exit, want %d", len(got), n)
	}
	for i, l := range got {
		var rec struct {
			Log    string `json:"log"`
			Status int    `json:"status"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.Log != "access" || rec.Status != 200 {
			t.Fatalf("line %d is not a whole access line (%v): %q", i, err, l)
		}
	}
}
