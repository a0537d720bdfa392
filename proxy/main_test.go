package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"

	httpproxy "github.com/gatehouse-dmz/gatehouse/proxy/http"
)

// holdEnv makes the test binary a holding backend (see holdingBackend)
// instead of running the tests.
const holdEnv = "GATEHOUSE_TEST_HOLDING_BACKEND"

func TestMain(m *testing.M) {
	if os.Getenv(holdEnv) == "1" {
		holdingBackend()
		return
	}
	// Every test of the package runs under each HTTP engine in turn:
	// testLimits, which every listener's limits start from, names it.
	// GATEHOUSE_TEST_HTTP_ENGINE picks one.
	for _, e := range []string{httpproxy.EngineStd, httpproxy.EngineFast} {
		if only := os.Getenv("GATEHOUSE_TEST_HTTP_ENGINE"); only != "" && only != e {
			continue
		}
		testEngine = e
		fmt.Printf("=== HTTP engine %s\n", e)
		if code := m.Run(); code != 0 {
			fmt.Printf("--- FAIL under HTTP engine %s\n", e)
			os.Exit(code)
		}
	}
}

// testEngine is the HTTP engine the tests run under now.
var testEngine = httpproxy.EngineStd

// holdingBackend is an internal HTTP host in a process of its own, so
// that its descriptors are not the proxy's: it prints its address, then
// one line per request to /hold, which it answers only once its standard
// input is closed; other paths it answers at once.
func holdingBackend() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	release := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(release)
	}()
	out := make(chan string, 1024)
	go func() {
		for line := range out {
			fmt.Println(line)
		}
	}()
	out <- ln.Addr().String()
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			out <- "held"
			<-release
		}
		io.WriteString(w, "ok")
	}))
}

// startHoldingBackend runs holdingBackend in a child process and returns
// its address, a channel that hears of every request it holds, and the
// function that lets them all go.
func startHoldingBackend(t *testing.T) (addr string, held <-chan struct{}, release func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		t.Fatal("the holding backend did not start")
	}
	addr = lines.Text()
	ch := make(chan struct{}, 4096)
	go func() {
		for lines.Scan() {
			ch <- struct{}{}
		}
	}()
	return addr, ch, func() { in.Close() }
}
