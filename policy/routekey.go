package policy

import "fmt"

// Key identifies r on a listener across policy generations: its listener,
// the listener's protocol and every field of the route, written
// unambiguously. A reload that changes any of them changes the key, and
// so ends the sessions (tcp, terminal, upgraded HTTP) that run on the
// route; every proxy compares routes by this one key.
func (r Route) Key(listener string, proto Protocol) string {
	return fmt.Sprintf("%s|%q|%#v", proto, listener, r)
}
