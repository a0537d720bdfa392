package telnet

import (
	"fmt"
	"slices"
	"strings"
)

// envVar is one entry of a NEW-ENVIRON IS or INFO list (RFC 1572 with the
// RFC 4777 variables). Name and Value are unescaped; raw is the entry as it
// stood in the decoded payload (ESC bytes kept), so unchanged entries are
// written back byte for byte.
type envVar struct {
	kind     byte // envVAR or envUSERVAR
	name     string
	value    []byte
	hasValue bool
	raw      []byte
	start    int // offset of the entry in the payload
}

// parseEnviron splits the body of a NEW-ENVIRON IS or INFO sub-negotiation
// (payload without the option byte, starting at IS/INFO). Bytes 0 to 3 are
// VAR, VALUE, ESC and USERVAR unless ESC precedes them, as RFC 4777 demands
// for binary values such as the eight bytes of IBMRSEED.
func parseEnviron(payload []byte) ([]envVar, error) {
	var (
		vars []envVar
		cur  *envVar
		name []byte
	)
	finish := func(end int) {
		if cur == nil {
			return
		}
		cur.name = string(name)
		vars = append(vars, *cur)
		vars[len(vars)-1].raw = payload[cur.start:end]
		cur = nil
	}
	body := payload[1:]
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch c {
		case envVAR, envUSERVAR:
			finish(i + 1)
			cur = &envVar{kind: c, start: i + 1}
			name = name[:0]
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("%w: NEW-ENVIRON list starts with %d", ErrMalformed, c)
		}
		switch c {
		case envVALUE:
			if cur.hasValue {
				return nil, fmt.Errorf("%w: NEW-ENVIRON %q has two VALUEs", ErrMalformed, string(name))
			}
			cur.hasValue = true
			cur.value = []byte{}
			continue
		case envESC:
			i++
			if i == len(body) {
				return nil, fmt.Errorf("%w: NEW-ENVIRON ends in ESC", ErrMalformed)
			}
			c = body[i]
		}
		if cur.hasValue {
			cur.value = append(cur.value, c)
		} else {
			name = append(name, c)
		}
	}
	finish(len(payload))
	return vars, nil
}

// Names and bounds of the RFC 4777 variables the policy looks at.
const (
	envDevName   = "DEVNAME"
	envAssocPrt  = "IBMASSOCPRT"
	envRSeed     = "IBMRSEED"
	rseedLength  = 8
	maxTermType  = 40
	maxEnvValue  = 64 // a device attribute's value; the longest real ones have ten-odd bytes
	maxPending   = 16 // host SENDs waiting for their answer
	maxLogged    = 16 // variable names in one log line
	maxNameLen   = 40 // of a name quoted in a log line
	envSignOnWhy = "sent before the terminal type was accepted; the host shows its sign-on screen"
)

// envDevice are the variables that reach the host before the terminal type
// is accepted, rebuilt into a fresh list: what the host needs to create the
// virtual device, nothing that signs anyone on. RFC 4777 (after RFC 2877)
// has the host ask for NEW-ENVIRON and wait for the answer before it asks
// for the terminal type, and creates the device from both, so these cannot
// wait for the terminal type without the session hanging.
var envDevice = map[string]bool{
	// The device itself: checked against the route's devnames (an
	// associated printer too, since it names a device of the host).
	envDevName: true, envAssocPrt: true,
	// Display device creation: keyboard, code page and character set.
	"KBDTYPE": true, "CODEPAGE": true, "CHARSET": true,
	// Ask the host for the startup response record, which tells the client
	// which device it got or why creation failed.
	"IBMSENDCONFREC": true,
	// Printer device creation: message queue, font, form feed, host print
	// transform with its printer model, paper sources and envelope hopper,
	// ASCII 899 support, workstation customising object.
	"IBMMSGQNAME": true, "IBMMSGQLIB": true, "IBMFONT": true, "IBMFORMFEED": true,
	"IBMTRANSFORM": true, "IBMMFRTYPMDL": true, "IBMPPRSRC1": true, "IBMPPRSRC2": true,
	"IBMENVELOPE": true, "IBMASCII899": true, "IBMWSCSTNAME": true, "IBMWSCSTLIB": true,
	// Printer attributes IBM's own emulator sends beside the RFC's (buffer
	// size; the DBCS feature, without which a DBCS printer is created as
	// an SBCS one).
	"IBMBUFFERSIZE": true, "IBMIGCFEAT": true,
}

// envSignOn are the auto sign-on variables (RFC 2877, RFC 4777): the user
// profile, its password (IBMRSEED with IBMSUBSPW, substituted or plain) or
// a Kerberos ticket instead, and what the signed-on job starts with
// (current library, initial menu, program). They never reach the host
// before the terminal type is accepted, and afterwards only on a route with
// refuse_auto_sign_on: false.
var envSignOn = map[string]bool{
	"USER": true, envRSeed: true, "IBMSUBSPW": true, "IBMTICKET": true,
	"IBMCURLIB": true, "IBMIMENU": true, "IBMPROGRAM": true,
}

// appendEnvBytes appends b to a NEW-ENVIRON list with VAR, VALUE, ESC and
// USERVAR bytes ESC-escaped (appendSub doubles IAC).
func appendEnvBytes(dst, b []byte) []byte {
	for _, c := range b {
		if c <= envUSERVAR {
			dst = append(dst, envESC)
		}
		dst = append(dst, c)
	}
	return dst
}

// deviceList is the fresh IS the host gets before the terminal type is
// accepted: the device variables in the client's order, each a USERVAR
// under its canonical name, so the host reads exactly what was checked.
func deviceList(vars []envVar) []byte {
	p := []byte{envIS}
	for _, v := range vars {
		up := strings.ToUpper(v.name)
		if !envDevice[up] {
			continue
		}
		p = append(p, envUSERVAR)
		p = appendEnvBytes(p, []byte(up))
		if v.hasValue {
			p = append(p, envVALUE)
			p = appendEnvBytes(p, v.value)
		}
	}
	return p
}

// envNames lists the names of vars that keep says, for a log line: never
// a value, at most maxLogged names, each quoted.
func envNames(vars []envVar, keep func(up string) bool) []string {
	var names []string
	for _, v := range vars {
		up := strings.ToUpper(v.name)
		if !keep(up) {
			continue
		}
		if len(names) == maxLogged {
			names = append(names, "…")
			break
		}
		n := up
		if envDevice[up] || envSignOn[up] {
			names = append(names, n)
			continue
		}
		if len(n) > maxNameLen {
			n = n[:maxNameLen]
		}
		names = append(names, printable([]byte(n)))
	}
	return names
}

// checkEnviron applies the route to a TN5250 list that may reach the host:
// one DEVNAME (required while no device was accepted on a route with
// devnames) and any IBMASSOCPRT must match devnames, IBMRSEED has zero or
// eight bytes, no variable the policy knows appears twice, device
// attributes are short. It records the accepted device.
func (d *direction) checkEnviron(vars []envVar) error {
	s, rt := d.s, d.s.rt
	seen := map[string]bool{}
	dev, named := "", false
	for _, v := range vars {
		up := strings.ToUpper(v.name)
		if !envDevice[up] && !envSignOn[up] {
			continue
		}
		if seen[up] {
			return refuse("NEW-ENVIRON names %s twice", up)
		}
		seen[up] = true
		switch {
		case up == envDevName || up == envAssocPrt:
			name := string(v.value)
			if name == "" {
				// No name: the host picks one of its own.
				if len(rt.devNames) > 0 {
					return refuse("NEW-ENVIRON %s is empty and the route restricts devices", up)
				}
				continue
			}
			if !validDevName(name) {
				return refuse("device name %s is malformed", printable(v.value))
			}
			if !rt.devAllowed(name) {
				return refuse("device name %q not allowed", name)
			}
			if up == envDevName {
				dev, named = name, true
			}
		case up == envRSeed && len(v.value) != 0 && len(v.value) != rseedLength:
			return refuse("IBMRSEED of %d bytes, not %d", len(v.value), rseedLength)
		case envDevice[up] && len(v.value) > maxEnvValue:
			return refuse("NEW-ENVIRON %s of %d bytes, over %d", up, len(v.value), maxEnvValue)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !named && !s.vetDev {
		// The list carries the device's identity: without it the host
		// would pick a device outside the route.
		return refuse("NEW-ENVIRON names no device and the route restricts devices")
	}
	if named {
		s.dev, s.vetDev = dev, true
	}
	return nil
}

// environ5250 applies the policy to a client's TN5250 NEW-ENVIRON IS or
// INFO. An IS passes only as the answer to a host's SEND (one answer each;
// an IS nobody asked for, or a second one, is dropped), an INFO only after
// the terminal type was accepted. Before that, the host gets a fresh IS of
// the device variables (envDevice) after the route's checks; every other
// variable, the auto sign-on ones above all, is dropped. Afterwards the
// list passes as it came, but for the sign-on variables on a route that
// refuses auto sign-on.
func (d *direction) environ5250(payload []byte) (bool, error) {
	s, rt := d.s, d.s.rt
	vars, err := parseEnviron(payload)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	accepted := s.vetType
	answer := payload[0] == envIS && s.sends > 0
	if answer {
		s.sends--
	}
	s.mu.Unlock()
	switch {
	case payload[0] == envIS && !answer:
		d.envDropped("NEW-ENVIRON IS the host did not ask for", vars)
		return false, nil
	case payload[0] == envINFO && !accepted:
		d.envDropped("NEW-ENVIRON INFO before the terminal type was accepted", vars)
		return false, nil
	}
	if err := d.checkEnviron(vars); err != nil {
		return false, err
	}
	if !accepted {
		d.out = appendSub(d.out, optNewEnviron, deviceList(vars))
		if names := envNames(vars, func(up string) bool { return envSignOn[up] }); len(names) > 0 {
			s.h.logger.Info("auto sign-on values held back", "tenant", s.peer.Tenant, "source", s.peer.Source.String(),
				"variables", names, "why", envSignOnWhy)
		}
		if names := envNames(vars, func(up string) bool { return !envSignOn[up] && !envDevice[up] }); len(names) > 0 {
			s.h.logger.Debug("NEW-ENVIRON variables held back before the terminal type was accepted", "tenant", s.peer.Tenant,
				"source", s.peer.Source.String(), "variables", names)
		}
		return false, nil
	}
	if rt.allowAutoSignOn || !slices.ContainsFunc(vars, func(v envVar) bool { return envSignOn[strings.ToUpper(v.name)] }) {
		return true, nil
	}
	p := []byte{payload[0]}
	for _, v := range vars {
		if !envSignOn[strings.ToUpper(v.name)] {
			p = append(p, v.raw...)
		}
	}
	s.h.logger.Info("auto sign-on refused", "tenant", s.peer.Tenant, "source", s.peer.Source.String(),
		"variables", envNames(vars, func(up string) bool { return envSignOn[up] }),
		"why", "refuse_auto_sign_on (the default; false lets sign-on values through once the terminal type is accepted)")
	if len(p) > 1 || payload[0] == envIS {
		// An answer is owed even when empty; an INFO of nothing is not.
		d.out = appendSub(d.out, optNewEnviron, p)
	}
	return false, nil
}

// envDropped notes a list the host never sees.
func (d *direction) envDropped(msg string, vars []envVar) {
	d.s.h.logger.Debug(msg, "tenant", d.s.peer.Tenant, "source", d.s.peer.Source.String(),
		"variables", envNames(vars, func(string) bool { return true }))
}
