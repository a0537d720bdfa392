package telnet

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// tokens renders what a parser emits, for comparing runs; adjacent data
// runs are merged, since where a read ends splits a run.
func tokens(b []byte, max int, chunks func([]byte) [][]byte) (string, []byte, error) {
	p := Parser{MaxSub: max}
	var sb strings.Builder
	var raw, data []byte
	var err error
	flush := func() {
		if len(data) > 0 {
			fmt.Fprintf(&sb, "D%x|", data)
			data = data[:0]
		}
	}
	for _, c := range chunks(b) {
		err = p.Feed(c, func(t Token) error {
			raw = append(raw, t.Raw...)
			if t.Kind == Data {
				data = append(data, t.Raw...)
				return nil
			}
			flush()
			fmt.Fprintf(&sb, "T%d/%d/%d/%x/%x|", t.Kind, t.Cmd, t.Opt, t.Payload, t.Raw)
			return nil
		})
		if err != nil {
			break
		}
	}
	flush()
	return sb.String(), raw, err
}

func whole(b []byte) [][]byte { return [][]byte{b} }
func single(b []byte) [][]byte {
	var out [][]byte
	for i := range b {
		out = append(out, b[i:i+1])
	}
	return out
}

func TestParser(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []TokenKind
		err  error
	}{
		{"data", "abc", []TokenKind{Data}, nil},
		{"iac iac", "a\xff\xffb", []TokenKind{Data}, nil},
		{"nego", "\xff\xfd\x18", []TokenKind{Negotiation}, nil},
		{"commands", "\xff\xf1\xff\xef\xff\xf4\xff\xf3", []TokenKind{Command, Command, Command, Command}, nil},
		{"sub", "\xff\xfa\x18\x01\xff\xf0", []TokenKind{Sub}, nil},
		{"sub with iac", "\xff\xfa\x27\x00\x03A\x01\xff\xff\xff\xf0", []TokenKind{Sub}, nil},
		{"iac inside sub", "\xff\xfa\x18\x01\xff\xf1\xff\xf0", nil, ErrMalformed},
		{"sub without option", "\xff\xfa\xff\xf0", nil, ErrMalformed},
		{"sub too long", "\xff\xfa\x18" + strings.Repeat("x", 100) + "\xff\xf0", nil, ErrSubTooLong},
		{"stray se", "\xff\xf0", []TokenKind{Command}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunks := range []func([]byte) [][]byte{whole, single} {
				p := Parser{MaxSub: 64}
				var got []TokenKind
				var raw []byte
				var err error
				for _, c := range chunks([]byte(tc.in)) {
					if err = p.Feed(c, func(tk Token) error {
						got = append(got, tk.Kind)
						raw = append(raw, tk.Raw...)
						return nil
					}); err != nil {
						break
					}
				}
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				if tc.err != nil {
					if err2 := p.Feed([]byte("x"), func(Token) error { return nil }); !errors.Is(err2, tc.err) {
						t.Fatalf("error not sticky: %v", err2)
					}
					continue
				}
				if len(chunks([]byte(tc.in))) == 1 && fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("tokens %v, want %v", got, tc.want)
				}
				if string(raw) != tc.in || p.Pending() {
					t.Errorf("raw % x, pending %v; want the input back", raw, p.Pending())
				}
			}
		})
	}
}

func TestParseEnviron(t *testing.T) {
	p := []byte("\x00\x00USER\x01BOB\x03IBMRSEED\x01\x02\x00\x02\x01\x02\x02\x02\x03\xff\x10\x20\x30\x03KBD")
	vars, err := parseEnviron(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) != 3 || vars[0].name != "USER" || string(vars[0].value) != "BOB" || vars[0].kind != envVAR {
		t.Fatalf("vars %+v", vars)
	}
	if vars[1].name != "IBMRSEED" || !bytes.Equal(vars[1].value, []byte{0, 1, 2, 3, 0xff, 0x10, 0x20, 0x30}) {
		t.Fatalf("seed % x", vars[1].value)
	}
	if vars[2].hasValue || vars[2].kind != envUSERVAR {
		t.Fatalf("KBD %+v", vars[2])
	}
	var joined []byte
	for _, v := range vars {
		joined = append(joined, v.raw...)
	}
	if !bytes.Equal(joined, p[1:]) {
		t.Fatalf("raw entries do not add up to the list")
	}
	for _, bad := range []string{"\x00X", "\x00\x03A\x01B\x01C", "\x00\x03A\x01\x02"} {
		if _, err := parseEnviron([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"ACMELU0*", "ACMELU01", true},
		{"ACMELU0*", "acmelu0", true},
		{"ACMELU0*", "ACMELU1", false},
		{"*DSP*", "ACMEDSP1", true},
		{"A*B*C", "AXXBYYC", true},
		{"A*B*C", "AXXBYY", false},
		{"EXACT", "EXACTX", false},
		{"*", "", true},
	} {
		if got := match(tc.p, tc.s); got != tc.want {
			t.Errorf("match(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

// TestNewRefusesBadRoutes: what New still refuses itself (the routes
// themselves are policy.CheckListeners' to judge): a listener that is no
// terminal listener, and backend TLS it cannot build.
func TestNewRefusesBadRoutes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto policy.Protocol
		r     policy.Route
	}{
		{"bad backend", policy.ProtoTN3270, policy.Route{Tenant: "a", Backend: "h"}},
		{"ca without tls", policy.ProtoTN3270, policy.Route{Tenant: "a", Backend: "h:23", BackendCA: "x.pem"}},
		{"missing ca", policy.ProtoTN3270, policy.Route{Tenant: "a", Backend: "h:23", BackendTLS: true, BackendCA: "/nonexistent"}},
		{"tcp", policy.ProtoTCP, policy.Route{Tenant: "a", Backend: "h:23"}},
	} {
		if _, err := New(Config{Listener: "l", Protocol: tc.proto, Routes: []policy.Route{tc.r}}); err == nil {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

// FuzzParser: however a stream is cut, the parser emits the same tokens,
// their raw bytes are the input exactly, and it never panics.
func FuzzParser(f *testing.F) {
	for _, tr := range loadTranscripts(f) {
		for _, st := range tr.steps {
			if !st.expect {
				f.Add(st.data, uint16(len(st.data)/2))
			}
		}
	}
	f.Add([]byte("\xff\xfa\x18\xff\xff\xff\xf0\xff"), uint16(3))
	f.Fuzz(func(t *testing.T, b []byte, cut uint16) {
		k := int(cut) % (len(b) + 1)
		split := func(b []byte) [][]byte { return [][]byte{b[:k], b[k:]} }
		ws, wr, werr := tokens(b, 128, whole)
		for _, chunks := range []func([]byte) [][]byte{split, single} {
			s, r, err := tokens(b, 128, chunks)
			if (err == nil) != (werr == nil) || err == nil && (s != ws || !bytes.Equal(r, wr)) {
				t.Fatalf("cut changes the parse:\n%s %v\n%s %v", ws, werr, s, err)
			}
		}
		if werr == nil && !bytes.HasPrefix(b, wr) {
			t.Fatalf("raw tokens are not the input")
		}
	})
}

// FuzzSession feeds arbitrary client and host bytes through the policy of
// each protocol: it must never panic, and cutting the input must not change
// what either side receives.
func FuzzSession(f *testing.F) {
	for _, tr := range loadTranscripts(f) {
		var c, h []byte
		for _, st := range tr.steps {
			if !st.expect && st.who == "client" {
				c = append(c, st.data...)
			} else if !st.expect {
				h = append(h, st.data...)
			}
		}
		f.Add(c, h, tr.proto == policy.ProtoTN5250, uint16(7))
	}
	f.Fuzz(func(t *testing.T, c, h []byte, is5250 bool, cut uint16) {
		tr := transcript{proto: policy.ProtoTN3270, route: policy.Route{Tenant: "acme",
			LUNames: []string{"ACMELU0*"}, TerminalTypes: []string{"IBM-*"}}}
		if is5250 {
			tr.proto = policy.ProtoTN5250
			tr.route = policy.Route{Tenant: "acme", DevNames: []string{"ACMEDSP*"}}
		}
		// Host first, as a host opens the negotiation.
		tr.steps = []step{{who: "host", data: h}, {who: "client", data: c}}
		wc, wh, werr := offline(t, tr, func(int) bool { return false })
		k := int(cut)
		gc, gh, gerr := offline(t, tr, func(off int) bool { return off == k })
		if !bytes.Equal(wc, gc) || !bytes.Equal(wh, gh) || resultOf(werr) != resultOf(gerr) {
			t.Fatalf("cut at %d changes the session: %v / %v", k, werr, gerr)
		}
	})
}
