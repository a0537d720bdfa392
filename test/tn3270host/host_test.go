package tn3270host

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestTN3270Host plays a terminal against the scripted host over loopback:
// it must ask for the terminal type, switch to EOR and BINARY, and send one
// Erase/Write record holding the title and the terminal type.
func TestTN3270Host(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var logs bytes.Buffer
	go Serve(ln, &logs)

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	expect := func(want ...byte) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(r, got); err != nil {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("host sent % x, want % x", got, want)
		}
	}
	send := func(b ...byte) {
		t.Helper()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}

	expect(tnIAC, tnDO, optTType)
	// An option the host does not use is refused, once.
	send(tnIAC, tnWILL, 31)
	send(tnIAC, tnWILL, optTType)
	expect(tnIAC, tnDONT, 31)
	expect(tnIAC, tnSB, optTType, ttypeSend, tnIAC, tnSE)
	send(append(append([]byte{tnIAC, tnSB, optTType, ttypeIs}, "IBM-3278-2-E"...), tnIAC, tnSE)...)
	expect(tnIAC, tnDO, optEOR, tnIAC, tnWILL, optEOR, tnIAC, tnDO, optBinary, tnIAC, tnWILL, optBinary)
	send(tnIAC, tnWILL, optEOR, tnIAC, tnDO, optEOR, tnIAC, tnWILL, optBinary, tnIAC, tnDO, optBinary)

	var record []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			t.Fatalf("reading the screen: %v (got % x)", err, record)
		}
		if b == tnIAC {
			next, err := r.ReadByte()
			if err != nil {
				t.Fatal(err)
			}
			if next == tnEOR {
				break
			}
			b = next
		}
		record = append(record, b)
	}
	if len(record) < 2 || record[0] != cmdEraseWrite {
		t.Fatalf("record does not start with Erase/Write: % x", record)
	}
	for _, want := range []string{ScreenTitle, "TERMINAL TYPE IBM-3278-2-E", "USERID ===>"} {
		if !bytes.Contains(record, toEBCDIC(want)) {
			t.Errorf("screen lacks %q", want)
		}
	}
	// Cursor set at row 21, column 13: SBA with the encoded address, then IC.
	a := 21*screenColumns + 13
	if !bytes.Contains(record, []byte{orderSBA, addrCodes[a>>6], addrCodes[a&0x3F], orderIC}) {
		t.Errorf("no cursor at 21,13 in % x", record)
	}
	c.Close()
	time.Sleep(50 * time.Millisecond)
	if s := logs.String(); strings.TrimSpace(s) != "" {
		t.Errorf("host logged an error: %s", s)
	}
}

// TestTN3270HostRefusal: a terminal that will not send its type ends the
// session with an error, not a hang.
func TestTN3270HostRefusal(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	done := make(chan error, 1)
	go func() { done <- tn3270Session(a) }()
	go io.Copy(io.Discard, b)
	if _, err := b.Write([]byte{tnIAC, tnWONT, optTType}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "refused option 24") {
			t.Errorf("session: %v, want a refusal of option 24", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
}

func TestToEBCDIC(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []byte
	}{
		{"AZ az 09", []byte{0xC1, 0xE9, 0x40, 0x81, 0xA9, 0x40, 0xF0, 0xF9}},
		{"J-R.=>", []byte{0xD1, 0x60, 0xD9, 0x4B, 0x7E, 0x6E}},
		{"é", []byte{0x6F}},
	} {
		if got := toEBCDIC(c.in); !bytes.Equal(got, c.want) {
			t.Errorf("toEBCDIC(%q) = % x, want % x", c.in, got, c.want)
		}
	}
}
