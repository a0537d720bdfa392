package tunnel

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func goodHeader() *Header {
	return &Header{Tenant: "acme", FingerprintSHA256: strings.Repeat("ab", 32), Source: netip.MustParseAddrPort("203.0.113.9:40000"),
		Listener: "web", Protocol: "https", Chain: [][]byte{{0x30, 0x01}}}
}

func frame(version byte, body string) []byte {
	b := []byte{version, 0, 0}
	binary.BigEndian.PutUint16(b[1:], uint16(len(body)))
	return append(b, body...)
}

func TestHeaderRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	h := goodHeader()
	if err := WriteHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("payload")
	got, err := ReadHeader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.Tenant != h.Tenant || got.Source != h.Source || got.Listener != h.Listener || !bytes.Equal(got.Chain[0], h.Chain[0]) {
		t.Fatalf("got %+v, want %+v", got, h)
	}
	if rest := buf.String(); rest != "payload" {
		t.Fatalf("ReadHeader read past its frame: %q left", rest)
	}
}

// TestHeaderRefusals: what a connector refuses of a gateway's frame.
func TestHeaderRefusals(t *testing.T) {
	ok := `{"tenant":"acme","fingerprint_sha256":"ab","source":"203.0.113.9:1","listener":"web","protocol":"https","chain":["MAE="]}`
	if _, err := ReadHeader(bytes.NewReader(frame(Version, ok))); err != nil {
		t.Fatalf("the base case is refused: %v", err)
	}
	for name, in := range map[string][]byte{
		"other version":  frame(2, ok),
		"unknown field":  frame(Version, strings.Replace(ok, `"tenant"`, `"admin":true,"tenant"`, 1)),
		"no tenant":      frame(Version, strings.Replace(ok, `"tenant":"acme",`, "", 1)),
		"no source":      frame(Version, strings.Replace(ok, `"source":"203.0.113.9:1",`, "", 1)),
		"bad source":     frame(Version, strings.Replace(ok, `203.0.113.9:1`, `somewhere`, 1)),
		"no chain":       frame(Version, strings.Replace(ok, `"chain":["MAE="]`, `"chain":[]`, 1)),
		"control chars":  frame(Version, strings.Replace(ok, `"web"`, `"web\n"`, 1)),
		"two objects":    frame(Version, ok+ok),
		"truncated":      frame(Version, ok)[:20],
		"empty":          nil,
		"length too big": {Version, 0xff, 0xff},
	} {
		if _, err := ReadHeader(bytes.NewReader(in)); !errors.Is(err, ErrHeader) {
			t.Errorf("%s: %v, want ErrHeader", name, err)
		}
	}
	big := goodHeader()
	big.Chain = [][]byte{make([]byte, MaxHeader)}
	if err := WriteHeader(&bytes.Buffer{}, big); !errors.Is(err, ErrHeader) {
		t.Errorf("a header over MaxHeader written: %v", err)
	}
}

func FuzzReadHeader(f *testing.F) {
	var buf bytes.Buffer
	_ = WriteHeader(&buf, goodHeader())
	f.Add(buf.Bytes())
	f.Add(frame(Version, `{"tenant":"a"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := ReadHeader(bytes.NewReader(in))
		if err != nil {
			return
		}
		// What is read is valid and writes back.
		if err := WriteHeader(&bytes.Buffer{}, h); err != nil {
			t.Fatalf("read %+v, which does not write: %v", h, err)
		}
	})
}

func TestStatus(t *testing.T) {
	var buf bytes.Buffer
	_ = writeStatus(&buf, StatusRefused, strings.Repeat("x", 300))
	_ = writeStatus(&buf, StatusOK, "")
	br := bufioReader(&buf)
	var re *RefusedError
	if err := readStatus(br); !errors.As(err, &re) || len(re.Reason) != 255 {
		t.Fatalf("refusal: %v", err)
	}
	if err := readStatus(br); err != nil {
		t.Fatalf("ok: %v", err)
	}
}

// TestAllowListControl: with a real dialer, an address outside the list
// is refused before the connect (the listener sees nothing), one inside
// connects.
func TestAllowListControl(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	ap := netip.MustParseAddrPort(ln.Addr().String())
	other, _ := policy.ParseDestination("127.0.0.1/32:1")
	d := net.Dialer{Control: AllowList{other}.Control}
	if _, err := d.Dial("tcp", ap.String()); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("dial outside the list: %v, want ErrNotAllowed", err)
	}
	if _, err := (&net.Dialer{Control: AllowList{}.Control}).Dial("tcp", ap.String()); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("an empty list allowed %s: %v", ap, err)
	}
	select {
	case <-accepted:
		t.Fatal("a refused dial reached the listener")
	default:
	}
	in := policy.Destination{Prefix: netip.MustParsePrefix("127.0.0.0/8"), First: ap.Port(), Last: ap.Port()}
	c, err := (&net.Dialer{Control: AllowList{in}.Control}).Dial("tcp", ap.String())
	if err != nil {
		t.Fatalf("dial inside the list: %v", err)
	}
	c.Close()
	<-accepted
}

func bufioReader(b *bytes.Buffer) *bufio.Reader { return bufio.NewReader(b) }
