package telnet

import (
	"bytes"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

func TestNewRefusesBadVIPRoutes(t *testing.T) {
	for name, r := range map[string]policy.Route{
		"lu_names":     {Tenant: "a", Backend: "h:23", LUNames: []string{"X"}},
		"force_lu":     {Tenant: "a", Backend: "h:23", ForceLU: "X"},
		"devnames":     {Tenant: "a", Backend: "h:23", DevNames: []string{"X"}},
		"auto sign-on": {Tenant: "a", Backend: "h:23", AllowsAutoSignOn: true},
	} {
		if _, err := New(Config{Listener: "l", Protocol: policy.ProtoTNVIP, Routes: []policy.Route{r}}); err == nil {
			t.Errorf("tnvip route with %s accepted", name)
		}
	}
	if _, err := New(Config{Listener: "l", Protocol: policy.ProtoTNVIP, Routes: []policy.Route{{Tenant: "a", Backend: "h:23"}}}); err != nil {
		t.Errorf("plain tnvip route refused: %v", err)
	}
}

// hostTypes returns the terminal types of every TERMINAL-TYPE IS in a
// stream the host received.
func hostTypes(t testing.TB, b []byte) []string {
	var types []string
	var p Parser
	err := p.Feed(b, func(tk Token) error {
		if tk.Kind == Sub && tk.Opt == optTTYPE && len(tk.Payload) > 0 && tk.Payload[0] == ttypeIS {
			types = append(types, string(tk.Payload[1:]))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the host received a stream that does not parse: %v", err)
	}
	return types
}

// FuzzTNVIPSession feeds arbitrary client and host bytes through the
// policy of a tnvip route without terminal_types: it must never panic,
// cutting the input must not change what either side receives, and the
// host never receives a terminal type that is not a VIP model.
func FuzzTNVIPSession(f *testing.F) {
	for _, tr := range loadTranscripts(f) {
		if tr.proto != policy.ProtoTNVIP {
			continue
		}
		var c, h []byte
		for _, st := range tr.steps {
			if !st.expect && st.who == "client" {
				c = append(c, st.data...)
			} else if !st.expect {
				h = append(h, st.data...)
			}
		}
		f.Add(c, h, uint16(5))
	}
	f.Fuzz(func(t *testing.T, c, h []byte, cut uint16) {
		tr := transcript{proto: policy.ProtoTNVIP, route: policy.Route{Tenant: "acme"}}
		tr.steps = []step{{who: "host", data: h}, {who: "client", data: c}}
		wc, wh, werr := offline(t, tr, func(int) bool { return false })
		k := int(cut)
		gc, gh, gerr := offline(t, tr, func(off int) bool { return off == k })
		if !bytes.Equal(wc, gc) || !bytes.Equal(wh, gh) || resultOf(werr) != resultOf(gerr) {
			t.Fatalf("cut at %d changes the session: %v / %v", k, werr, gerr)
		}
		for _, tt := range hostTypes(t, wh) {
			if !policy.VIPModel(tt) {
				t.Fatalf("the host received terminal type %q", tt)
			}
		}
	})
}
