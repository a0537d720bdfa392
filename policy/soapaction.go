package policy

import (
	"errors"
	"fmt"
	"strings"
)

// ErrSOAPAction is an entry of soap_actions the SOAP proxy could never
// match as written.
var ErrSOAPAction = errors.New("bad soap action")

// SOAPAction is one entry of a soap route's allow-list, written "ACTION"
// or "ACTION {NAMESPACE}NAME". A request's action (SOAPAction, the action
// parameter, wsa:Action) must be an entry's Action, and its Body must hold
// the operation that entry names: Element when the entry spells it out
// ("urn:getOrder {http://service.acme.example}getOrder", for a stack whose
// actions do not carry the namespace, or one action for several
// operations); otherwise the operation the action names by the usual
// conventions (see the SOAP proxy).
type SOAPAction struct {
	Action string
	// Element is the Body element the entry names: Namespace (empty: an
	// unqualified element) and Name. Name is empty when the entry names
	// none.
	Namespace, Name string
}

// ParseSOAPAction parses one entry of soap_actions.
func ParseSOAPAction(entry string) (SOAPAction, error) {
	action, element, explicit := strings.Cut(entry, " ")
	if action == "" || strings.ContainsFunc(action, badActionRune) {
		return SOAPAction{}, fmt.Errorf("%w: the action must be a URI without spaces, quotes or control characters", ErrSOAPAction)
	}
	if !explicit {
		if i := strings.LastIndexAny(action, "/:#"); i == len(action)-1 {
			return SOAPAction{}, fmt.Errorf("%w: %q names no operation after its last '/', ':' or '#' (or name the Body element: \"ACTION {NAMESPACE}NAME\")", ErrSOAPAction, action)
		}
		return SOAPAction{Action: action}, nil
	}
	rest, ok := strings.CutPrefix(element, "{")
	ns, name, closed := strings.Cut(rest, "}")
	if !ok || !closed || name == "" || strings.ContainsFunc(ns, badActionRune) ||
		strings.ContainsFunc(name, func(r rune) bool { return badActionRune(r) || strings.ContainsRune(":{}/", r) }) {
		return SOAPAction{}, fmt.Errorf("%w: %q: the Body element must be written {NAMESPACE}NAME ({}NAME for no namespace)", ErrSOAPAction, element)
	}
	return SOAPAction{Action: action, Namespace: ns, Name: name}, nil
}

func badActionRune(r rune) bool {
	return r <= ' ' || r == 0x7f || r == '"' || r == '{' || r == '}'
}
