package telnet

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse-dmz/gatehouse/internal/testkit"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestTN5250EnvironAcrossTLSRecords sends the client's NEW-ENVIRON answer
// over real TLS, cut into records inside a name, between ESC and the byte
// it escapes, between the two bytes of a doubled IAC and before IAC SE.
// The host must get the device list alone, and the log must name what was
// held back without a single value.
func TestTN5250EnvironAcrossTLSRecords(t *testing.T) {
	pki := newPKI(t)
	hostLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	logs := &testkit.LogBuffer{}
	h, err := New(Config{Listener: "mf", Protocol: policy.ProtoTN5250,
		Routes: []policy.Route{{Tenant: "acme", Backend: hostLn.Addr().String(), DevNames: []string{"ACMEDSP*"}}},
		Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	cliRaw, srvRaw := testkit.TCPPair(t)
	srv := tls.Server(srvRaw, pki.serverTLS)
	cli := tls.Client(cliRaw, pki.clientTLS())
	hs := make(chan error, 1)
	go func() { hs <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- h.Serve(context.Background(), srv, testPeer()) }()
	hostLn.(*net.TCPListener).SetDeadline(time.Now().Add(stepTimeout))
	host, err := hostLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	ask := mustTokens(t, `IAC DO NEW-ENVIRON IAC SB NEW-ENVIRON SEND VAR USERVAR IAC SE`)
	host.Write(ask)
	expectRead(t, cli, ask)
	is := mustTokens(t, `IAC WILL NEW-ENVIRON IAC SB NEW-ENVIRON IS VAR "USER" VALUE "ALICE" USERVAR "DEVNAME" VALUE "ACMEDSP1" `+
		`USERVAR "IBMRSEED" VALUE ESC 0x00 0x11 IAC IAC 0x13 0x14 0x15 0x16 0x17 USERVAR "IBMSUBSPW" VALUE "S3CRETPW" `+
		`USERVAR "CODEPAGE" VALUE "37" USERVAR "MYHOSTVAR" VALUE "HUSH" IAC SE`)
	cuts := []int{
		strings.Index(string(is), "DEVN") + 4,     // inside a name
		strings.Index(string(is), "\x02\x00") + 1, // between ESC and its byte
		strings.Index(string(is), "\xff\xff") + 1, // inside IAC IAC
		len(is) - 1, // between IAC and SE
	}
	prev := 0
	for _, c := range cuts {
		if c <= prev {
			t.Fatalf("cuts out of order: %v", cuts)
		}
		if _, err := cli.Write(is[prev:c]); err != nil { // one TLS record each
			t.Fatal(err)
		}
		prev = c
	}
	if _, err := cli.Write(is[prev:]); err != nil {
		t.Fatal(err)
	}
	expectRead(t, host, mustTokens(t, `IAC WILL NEW-ENVIRON IAC SB NEW-ENVIRON IS USERVAR "DEVNAME" VALUE "ACMEDSP1" `+
		`USERVAR "CODEPAGE" VALUE "37" IAC SE`))
	tt := mustTokens(t, `IAC WILL TTYPE IAC SB TTYPE IS "IBM-3179-2" IAC SE`)
	cli.Write(tt)
	expectRead(t, host, tt) // nothing else came before it
	cli.Close()
	if err := waitErr(t, served); err != nil {
		t.Fatal(err)
	}

	var signOn, other map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch m["msg"] {
		case "auto sign-on values held back":
			signOn = m
		case "NEW-ENVIRON variables held back before the terminal type was accepted":
			other = m
		}
	}
	if signOn == nil || other == nil || signOn["level"] != "INFO" || other["level"] != "DEBUG" {
		t.Fatalf("log lines missing or at the wrong level:\n%s", logs)
	}
	if got := strings.Join(names(signOn["variables"]), " "); got != "USER IBMRSEED IBMSUBSPW" {
		t.Errorf("sign-on variables logged %q", got)
	}
	if got := strings.Join(names(other["variables"]), " "); got != `"MYHOSTVAR"` {
		t.Errorf("other variables logged %q", got)
	}
	for _, secret := range []string{"ALICE", "S3CRETPW", "HUSH"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("a value reached the log: %s", secret)
		}
	}
}

func names(v any) []string {
	l, _ := v.([]any)
	var out []string
	for _, n := range l {
		s, _ := n.(string)
		out = append(out, s)
	}
	return out
}
