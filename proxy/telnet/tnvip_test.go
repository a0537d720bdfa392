package telnet

import (
	"bytes"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TestVIPRoutesRefuseOtherProtocolsKeys: the other terminal protocols'
// route keys are refused on a tnvip route where routes are judged
// (policy.CheckListeners, which the proxy's Apply and check run); a plain
// tnvip route passes and compiles with the VIP models as its default.
func TestVIPRoutesRefuseOtherProtocolsKeys(t *testing.T) {
	listener := func(r policy.Route) *policy.Policy {
		return &policy.Policy{Listeners: []policy.Listener{{Name: "l", Port: 2300, Protocol: policy.ProtoTNVIP, Routes: []policy.Route{r}}}}
	}
	for name, r := range map[string]policy.Route{
		"lu_names":     {Tenant: "a", Backend: "h:23", LUNames: []string{"X"}},
		"force_lu":     {Tenant: "a", Backend: "h:23", ForceLU: "X"},
		"devnames":     {Tenant: "a", Backend: "h:23", DevNames: []string{"X"}},
		"auto sign-on": {Tenant: "a", Backend: "h:23", AllowsAutoSignOn: true},
	} {
		if errs := listener(r).CheckListeners(); len(errs) == 0 {
			t.Errorf("tnvip route with %s accepted", name)
		}
	}
	plain := policy.Route{Tenant: "a", Backend: "h:23"}
	if errs := listener(plain).CheckListeners(); len(errs) != 0 {
		t.Errorf("plain tnvip route refused: %v", errs[0])
	}
	h, err := New(Config{Listener: "l", Protocol: policy.ProtoTNVIP, Routes: []policy.Route{plain}})
	if err != nil {
		t.Fatalf("plain tnvip route: %v", err)
	}
	if rt := h.routes[plain.Env()]; rt == nil || !rt.termAllowed("VIP7801") || rt.termAllowed("VT100") {
		t.Errorf("a tnvip route without terminal_types must allow the VIP models alone")
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
