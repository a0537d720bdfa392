package telnet

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/gatehouse-dmz/gatehouse/policy"
)

// terminalType checks TERMINAL-TYPE IS, with its RFC 1646 "type@LU" form.
func (d *direction) terminalType(v []byte) (bool, error) {
	s, rt := d.s, d.s.rt
	typ, lu, hasLU := splitTTYPE(v)
	if !validTermType(typ) {
		return false, refuse("terminal type %s is malformed", printable(v))
	}
	if !rt.termAllowed(string(typ)) {
		return false, refuse("terminal type %q not allowed", string(typ))
	}
	if s.h.proto != policy.ProtoTN3270 {
		// Only TN3270 names an LU in the terminal type (RFC 1646).
		if hasLU {
			return false, refuse("terminal type %s names a device", printable(v))
		}
		s.mu.Lock()
		s.ttype, s.vetType = string(typ), true
		s.mu.Unlock()
		return true, nil
	}
	if hasLU && !validLU(lu) {
		return false, refuse("LU %s is malformed", printable([]byte(lu)))
	}
	keep := true
	switch {
	case rt.forceLU != "":
		if !hasLU || lu != rt.forceLU {
			keep = false
			p := append([]byte{ttypeIS}, typ...)
			p = append(p, '@')
			p = append(p, rt.forceLU...)
			d.out = appendSub(d.out, optTTYPE, p)
			lu = rt.forceLU
		}
	case !hasLU && len(rt.luNames) > 0:
		return false, refuse("terminal type %q names no LU and the route restricts LUs", string(typ))
	case hasLU && !rt.luAllowed(lu):
		return false, refuse("LU %q not allowed", lu)
	}
	s.mu.Lock()
	s.ttype, s.lu, s.vetType = string(typ), lu, true
	s.mu.Unlock()
	return keep, nil
}

// deviceTypeRequest checks TN3270E DEVICE-TYPE REQUEST type [CONNECT|ASSOCIATE name];
// a refused request is answered with DEVICE-TYPE REJECT and never reaches
// the host, which still waits for a request the client may retry or drop
// (falling back to TN3270, where TERMINAL-TYPE is checked again).
func (d *direction) deviceTypeRequest(v []byte) (bool, error) {
	rt := d.s.rt
	typ, rest := v, []byte(nil)
	if i := bytes.IndexAny(v, "\x00\x01"); i >= 0 {
		typ, rest = v[:i], v[i:]
	}
	reject := func(reason byte) (bool, error) {
		d.reply = appendSub(d.reply, optTN3270E, []byte{tnDeviceType, tnReject, tnReason, reason})
		return false, nil
	}
	if !validTermType(typ) || !rt.termAllowed(string(typ)) {
		d.s.h.logger.Info("tn3270e device type rejected", "tenant", d.s.peer.Tenant, "terminal_type", printable(typ))
		return reject(reasonInvDeviceType)
	}
	var name string
	if len(rest) > 0 {
		name = string(rest[1:])
		if !validLU(name) {
			d.s.h.logger.Info("tn3270e device name rejected", "tenant", d.s.peer.Tenant, "lu", printable(rest[1:]))
			return reject(reasonInvDeviceName)
		}
		if rest[0] == tnAssociate {
			if !rt.luAllowed(name) {
				d.s.h.logger.Info("tn3270e associate rejected", "tenant", d.s.peer.Tenant, "lu", name)
				return reject(reasonInvAssociate)
			}
			return true, nil
		}
	}
	if rt.forceLU != "" {
		if name == rt.forceLU {
			return true, nil
		}
		p := append([]byte{tnDeviceType, tnRequest}, typ...)
		p = append(p, tnConnect)
		p = append(p, rt.forceLU...)
		d.out = appendSub(d.out, optTN3270E, p)
		return false, nil
	}
	if name != "" && !rt.luAllowed(name) {
		d.s.h.logger.Info("tn3270e device name rejected", "tenant", d.s.peer.Tenant, "lu", name)
		return reject(reasonInvDeviceName)
	}
	// A generic request is checked when the host says which LU it gave.
	return true, nil
}

// deviceTypeIs checks the host's DEVICE-TYPE IS type CONNECT name: the LU
// the session really got.
func (d *direction) deviceTypeIs(v []byte) (bool, error) {
	s, rt := d.s, d.s.rt
	i := bytes.IndexByte(v, tnConnect)
	if i < 0 {
		return false, refuse("host's device type names no LU")
	}
	typ, lu := string(v[:i]), string(v[i+1:])
	if rt.luRestricted() && (!validLU(lu) || !rt.luAllowed(lu)) {
		return false, refuse("host assigned LU %s outside the route", printable(v[i+1:]))
	}
	s.mu.Lock()
	s.ttype, s.lu, s.vetType = typ, lu, true
	s.mu.Unlock()
	return true, nil
}

// environ3270 closes a side door on TN3270 listeners: some hosts (IBM i
// among them) also take a device name from NEW-ENVIRON, so on a route that
// restricts LUs a DEVNAME must be an allowed LU too. The list passes
// unchanged.
func (d *direction) environ3270(payload []byte) (bool, error) {
	if !d.s.rt.luRestricted() {
		return true, nil
	}
	vars, err := parseEnviron(payload)
	if err != nil {
		return false, err
	}
	for _, v := range vars {
		if strings.EqualFold(v.name, envDevName) && v.hasValue {
			if lu := string(v.value); !validLU(lu) || !d.s.rt.luAllowed(lu) {
				return false, refuse("NEW-ENVIRON device name %s outside the route", printable(v.value))
			}
		}
	}
	return true, nil
}

// printable renders untrusted bytes for a log line.
func printable(b []byte) string {
	const max = 40
	if len(b) > max {
		b = b[:max]
	}
	return fmt.Sprintf("%q", b) // quoted and escaped: always valid UTF-8
}
