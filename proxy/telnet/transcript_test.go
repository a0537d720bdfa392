package telnet

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// A transcript is a golden negotiation: who writes what, and what the other
// side must receive through the proxy. Lines:
//
//	protocol tn3270|tn5250|tnvip
//	route key=value …         lu_names, terminal_types (comma lists), force_lu, devnames, refuse_auto_sign_on[=false]
//	client: TOKENS            the client writes
//	host: TOKENS              the host writes
//	client<: TOKENS | EOF     the client must read exactly these bytes, or the end of the stream
//	host<: TOKENS | EOF
//	result: ok|refused|…      how the session must end once both sides are done
//
// TOKENS are Telnet names (IAC, DO, SB, TTYPE, …; inside a sub-negotiation
// the option's own codes such as REQUEST or USERVAR), 0xNN bytes, hex:… runs
// and Go-quoted strings.
type transcript struct {
	name   string
	proto  policy.Protocol
	route  policy.Route
	steps  []step
	result string
}

type step struct {
	who    string // "client" or "host"
	expect bool   // a read, not a write
	eof    bool
	data   []byte
	line   int
}

var (
	tokCmds = map[string]byte{"IAC": 255, "SB": 250, "SE": 240, "WILL": 251, "WONT": 252, "DO": 253, "DONT": 254,
		"NOP": 241, "EOR": 239, "IP": 244, "BRK": 243, "AYT": 246, "GA": 249, "DM": 242, "AO": 245}
	tokOpts = map[string]byte{"BINARY": 0, "SGA": 3, "TIMING-MARK": 6, "TTYPE": 24, "EOR": 25, "NEW-ENVIRON": 39,
		"TN3270E": 40, "START-TLS": 46, "NAWS": 31}
	tokSub = map[byte]map[string]byte{
		optTTYPE: {"IS": 0, "SEND": 1},
		optTN3270E: {"ASSOCIATE": 0, "CONNECT": 1, "DEVICE-TYPE": 2, "FUNCTIONS": 3, "IS": 4, "REASON": 5,
			"REJECT": 6, "REQUEST": 7, "SEND": 8, "INV-ASSOCIATE": 2, "INV-DEVICE-NAME": 3, "INV-DEVICE-TYPE": 4},
		optNewEnviron: {"IS": 0, "SEND": 1, "INFO": 2, "VAR": 0, "VALUE": 1, "ESC": 2, "USERVAR": 3},
		optStartTLS:   {"FOLLOWS": 1},
	}
)

func parseTokens(s string) ([]byte, error) {
	var (
		out  []byte
		prev string
		ctx  = -1 // option of the open sub-negotiation
	)
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if s[0] == '"' {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return nil, fmt.Errorf("string: %w", err)
			}
			u, _ := strconv.Unquote(q)
			out = append(out, u...)
			s, prev = s[len(q):], ""
			continue
		}
		w, rest, _ := strings.Cut(s, " ")
		s = rest
		switch {
		case strings.HasPrefix(w, "0x"):
			v, err := strconv.ParseUint(w[2:], 16, 8)
			if err != nil {
				return nil, fmt.Errorf("byte %q: %w", w, err)
			}
			out = append(out, byte(v))
		case strings.HasPrefix(w, "hex:"):
			b, err := hex.DecodeString(w[4:])
			if err != nil {
				return nil, fmt.Errorf("%q: %w", w, err)
			}
			out = append(out, b...)
		case prev == "WILL" || prev == "WONT" || prev == "DO" || prev == "DONT" || prev == "SB":
			o, ok := tokOpts[w]
			if !ok {
				return nil, fmt.Errorf("unknown option %q", w)
			}
			out = append(out, o)
			if prev == "SB" {
				ctx = int(o)
			}
		case prev == "IAC" || w == "IAC":
			c, ok := tokCmds[w]
			if !ok {
				return nil, fmt.Errorf("unknown command %q", w)
			}
			out = append(out, c)
			if w == "SE" {
				ctx = -1
			}
			if prev == "IAC" && w == "IAC" {
				w = "" // IAC IAC is a data byte, not the start of a command
			}
		case ctx >= 0 && hasKey(tokSub[byte(ctx)], w):
			out = append(out, tokSub[byte(ctx)][w])
		default:
			return nil, fmt.Errorf("unknown token %q", w)
		}
		prev = w
	}
	return out, nil
}

func hasKey(m map[string]byte, k string) bool { _, ok := m[k]; return ok }

func loadTranscript(t testing.TB, path string) transcript {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := transcript{name: filepath.Base(path), result: ResultOK}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, " ")
		val = strings.TrimSpace(val)
		fail := func(err error) { t.Fatalf("%s:%d: %v", path, n, err) }
		switch {
		case key == "protocol":
			tr.proto = policy.Protocol(val)
		case key == "route":
			tr.route = policy.Route{Tenant: "acme"}
			for _, kv := range strings.Fields(val) {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "lu_names":
					tr.route.LUNames = strings.Split(v, ",")
				case "terminal_types":
					tr.route.TerminalTypes = strings.Split(v, ",")
				case "force_lu":
					tr.route.ForceLU = v
				case "devnames":
					tr.route.DevNames = strings.Split(v, ",")
				case "refuse_auto_sign_on":
					// true is the default; =false allows auto sign-on.
					tr.route.AllowsAutoSignOn = v == "false"
				default:
					fail(fmt.Errorf("unknown route key %q", k))
				}
			}
		case key == "result:":
			tr.result = val
		case ok && (key == "client:" || key == "host:" || key == "client<:" || key == "host<:"):
			st := step{who: strings.TrimRight(key, "<:"), expect: strings.HasSuffix(key, "<:"), line: n}
			if val == "EOF" && st.expect {
				st.eof = true
			} else if st.data, err = parseTokens(val); err != nil {
				fail(err)
			}
			tr.steps = append(tr.steps, st)
		default:
			fail(fmt.Errorf("cannot read %q", line))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if tr.proto == "" || tr.route.Tenant == "" {
		t.Fatalf("%s: needs protocol and route", path)
	}
	return tr
}

func loadTranscripts(t testing.TB) []transcript {
	files, err := filepath.Glob("testdata/*.transcript")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	var trs []transcript
	for _, f := range files {
		trs = append(trs, loadTranscript(t, f))
	}
	return trs
}

func TestParseTokens(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []byte
	}{
		{`IAC DO TTYPE`, []byte{255, 253, 24}},
		{`IAC WILL EOR IAC EOR`, []byte{255, 251, 25, 255, 239}},
		{`IAC SB TTYPE IS "IBM-3278-2" IAC SE`, append(append([]byte{255, 250, 24, 0}, "IBM-3278-2"...), 255, 240)},
		{`IAC SB TN3270E DEVICE-TYPE REQUEST "X" CONNECT "L" IAC SE`, []byte{255, 250, 40, 2, 7, 'X', 1, 'L', 255, 240}},
		{`0xF5 IAC IAC 0x01 hex:c3c1`, []byte{0xf5, 255, 255, 1, 0xc3, 0xc1}},
		{`IAC SB NEW-ENVIRON IS USERVAR "A" VALUE ESC 0x00 IAC SE`, []byte{255, 250, 39, 0, 3, 'A', 1, 2, 0, 255, 240}},
	} {
		got, err := parseTokens(tc.in)
		if err != nil || string(got) != string(tc.want) {
			t.Errorf("parseTokens(%s) = % x, %v; want % x", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{`IAC DO NOSUCH`, `REQUEST`, `0xZZ`, `"open`} {
		if _, err := parseTokens(bad); err == nil {
			t.Errorf("parseTokens(%s) accepted", bad)
		}
	}
}
