package worker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// pair returns both ends of a control socketpair.
func pair(t *testing.T) (*conn, *conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]*conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "control")
		c, err := newConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cs[i] = c
	}
	return cs[0], cs[1]
}

func TestFrameRoundTripWithDescriptors(t *testing.T) {
	a, b := pair(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := a.send(MsgPolicy, 7, Policy{Policy: []byte(`{"Generation":3}`), Sockets: []string{":443"}}, int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	fr, fds, err := b.recv()
	if err != nil {
		t.Fatal(err)
	}
	defer closeFDs(fds)
	var p Policy
	if err := decode(fr, &p); err != nil {
		t.Fatal(err)
	}
	if fr.Type != MsgPolicy || fr.Seq != 7 || len(fds) != 1 || p.Sockets[0] != ":443" {
		t.Fatalf("got %+v, %d descriptors, %+v", fr, len(fds), p)
	}
}

// TestOversizeFrameRefused: a frame that announces more than MaxFrame is
// refused before anything of it is read or allocated; the sender refuses
// to write one too.
func TestOversizeFrameRefused(t *testing.T) {
	a, b := pair(t)
	hdr := binary.BigEndian.AppendUint32(nil, MaxFrame+1)
	if _, err := a.uc.Write(hdr); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.recv(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("recv: %v, want ErrFrameTooLarge", err)
	}
	big := Metrics{Families: bytes.Repeat([]byte{1}, MaxFrame)}
	if err := a.send(MsgMetrics, 1, big); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("send: %v, want ErrFrameTooLarge", err)
	}
}

// TestMalformedFramesRefused: garbage, unknown fields and a frame without
// a type are errors, not messages.
func TestMalformedFramesRefused(t *testing.T) {
	for name, body := range map[string]string{
		"not json":      `{"type":`,
		"unknown field": `{"type":"status","admit":"192.0.2.1"}`,
		"no type":       `{"seq":1}`,
	} {
		t.Run(name, func(t *testing.T) {
			a, b := pair(t)
			msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
			if _, err := a.uc.Write(append(msg, body...)); err != nil {
				t.Fatal(err)
			}
			if _, _, err := b.recv(); err == nil || !strings.Contains(err.Error(), "malformed") {
				t.Fatalf("recv: %v, want malformed", err)
			}
		})
	}
	var r Result
	if err := decode(Frame{Type: MsgResult, Body: []byte(`{"error":"","admitted":true}`)}, &r); err == nil {
		t.Fatal("a body with an unknown field decoded")
	}
}

// TestWorkerRefusesOtherVersion: a worker told another protocol version
// exits before it does anything else.
func TestWorkerRefusesOtherVersion(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	pf := os.NewFile(uintptr(fds[0]), "enforcer")
	enf, err := newConn(pf)
	pf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer enf.Close()
	if err := enf.send(MsgHello, 0, Hello{Version: Version + 1, UID: 65534, GID: 65534}); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	err = Main(os.NewFile(uintptr(fds[1]), "worker"), &log, &log)
	if !errors.Is(err, ErrVersion) {
		t.Fatalf("Main: %v, want ErrVersion", err)
	}
}

// TestMergeSumsWorkers: the workers' series come out once, with the
// labels a single process has, counters and gauges summed, the shared
// certificate expiry taken once, and their Go runtime series left out.
func TestMergeSumsWorkers(t *testing.T) {
	counter := func(v float64) *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String("gatehouse_tls_handshakes_total"), Type: dto.MetricType_COUNTER.Enum(),
			Metric: []*dto.Metric{{Label: []*dto.LabelPair{{Name: proto.String("tenant"), Value: proto.String("acme")}},
				Counter: &dto.Counter{Value: proto.Float64(v)}}}}
	}
	gauge := func(name string, v float64) *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String(name), Type: dto.MetricType_GAUGE.Enum(),
			Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(v)}}}}
	}
	byName, series := map[string]*dto.MetricFamily{}, map[string]*dto.Metric{}
	for _, w := range []float64{2, 3} {
		mergeFamily(byName, series, counter(w))
		mergeFamily(byName, series, gauge("gatehouse_proxy_connections_active", w))
		mergeFamily(byName, series, gauge("gatehouse_cert_expiry_timestamp_seconds", 1e9))
		mergeFamily(byName, series, gauge("go_goroutines", w))
	}
	if v := byName["gatehouse_tls_handshakes_total"].Metric[0].GetCounter().GetValue(); v != 5 {
		t.Errorf("handshakes %v, want 5", v)
	}
	if v := byName["gatehouse_proxy_connections_active"].Metric[0].GetGauge().GetValue(); v != 5 {
		t.Errorf("active %v, want 5", v)
	}
	if v := byName["gatehouse_cert_expiry_timestamp_seconds"].Metric[0].GetGauge().GetValue(); v != 1e9 {
		t.Errorf("expiry %v, want 1e9", v)
	}
	if _, ok := byName["go_goroutines"]; ok {
		t.Error("the workers' Go runtime series were merged")
	}
}
