package telnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// readSize is each direction's read buffer. Reads of a TLS connection are
// served from its decrypted record, so a small buffer costs calls, not
// copies, and keeps an idle session cheap.
const readSize = 4 << 10

// bulkPool holds the read buffers of directions in a bulk transfer: a full
// TLS record and then some.
var bulkPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// outPool holds the buffers a direction assembles its output in; they are
// only held between a read and the write that follows it.
var outPool = sync.Pool{New: func() any { b := make([]byte, 0, readSize+64); return &b }}

// maxPooledOut is the largest output buffer returned to outPool.
const maxPooledOut = 40 << 10

// session is one client connection and its host connection.
type session struct {
	h      *Handler
	rt     *route
	peer   Peer
	client net.Conn
	host   net.Conn
	start  time.Time

	clientMu sync.Mutex // writes to client: host output and the proxy's own replies
	hostMu   sync.Mutex // writes to host: client output and the proxy's own replies

	mu      sync.Mutex // the negotiated state below
	vetType bool       // terminal type (and LU) accepted
	vetDev  bool       // tn5250: DEVNAME accepted, or none required
	lu      string
	dev     string
	ttype   string

	dataPhase atomic.Bool
	negos     atomic.Int32
	bytesIn   atomic.Int64 // from the client
	bytesOut  atomic.Int64 // to the client

	// timer ends the session when idle or too long (limits.telnet); Serve
	// sets it, Sessions.Rearm gives it new limits on a reload.
	timer *relay.Timer

	endOnce sync.Once
	endErr  error
	reason  string
	result  string
}

func newSession(h *Handler, rt *route, peer Peer, client, host net.Conn, start time.Time) *session {
	s := &session{h: h, rt: rt, peer: peer, client: client, host: host, start: start}
	s.vetDev = h.proto != policy.ProtoTN5250 || len(rt.devNames) == 0
	return s
}

// end records why the session ends (the first caller wins) and closes both
// connections, which ends both directions.
func (s *session) end(reason, result string, err error) {
	s.endOnce.Do(func() {
		s.reason, s.result, s.endErr = reason, result, err
		s.client.Close()
		s.host.Close()
	})
}

func (s *session) run(ctx context.Context) error {
	nego := time.AfterFunc(s.h.bounds.negotiationTimeout, func() {
		if !s.dataPhase.Load() {
			s.end("negotiation timeout", ResultTimeout, ErrNegotiation)
		}
	})
	stop := context.AfterFunc(ctx, func() { s.end("shutdown", ResultShutdown, ErrShutdown) })

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.pump(false)
	}()
	s.pump(true)
	<-done
	stop()
	nego.Stop()
	if s.timer != nil {
		s.timer.Stop()
	}
	return s.endErr
}

// direction is one way through the session with its own parser state.
type direction struct {
	s          *session
	fromClient bool
	p          Parser
	out        []byte // bytes for the other side
	reply      []byte // the proxy's own answer to this side
	storm      bucket // the client's negotiations after the data phase
}

func (s *session) pump(fromClient bool) {
	src, dst := s.host, s.client
	srcMu, dstMu := &s.hostMu, &s.clientMu
	if fromClient {
		src, dst = s.client, s.host
		srcMu, dstMu = &s.clientMu, &s.hostMu
	}
	d := &direction{s: s, fromClient: fromClient, p: Parser{MaxSub: s.h.bounds.maxSub}}
	small := make([]byte, readSize)
	// A read that fills the small buffer means a bulk transfer: borrow a
	// large one until reads get short again, so bulk moves in few writes
	// and an idle session keeps only the small one.
	var large *[]byte
	defer func() {
		if large != nil {
			bulkPool.Put(large)
		}
	}()
	for {
		buf := small
		if large != nil {
			buf = *large
		}
		n, err := src.Read(buf)
		if n > 0 {
			if s.timer != nil {
				s.timer.Touch()
			}
			if fromClient {
				s.bytesIn.Add(int64(n))
			}
			ob := outPool.Get().(*[]byte)
			d.out, d.reply = (*ob)[:0], nil
			ferr := d.p.Feed(buf[:n], d.token)
			werr := write(dstMu, dst, d.out)
			if werr == nil && !fromClient {
				s.bytesOut.Add(int64(len(d.out)))
			}
			if cap(d.out) <= maxPooledOut {
				*ob = d.out[:0]
				outPool.Put(ob)
			}
			d.out = nil
			if werr == nil && len(d.reply) > 0 {
				werr = write(srcMu, src, d.reply)
				if werr == nil && fromClient {
					s.bytesOut.Add(int64(len(d.reply)))
				}
			}
			if ferr != nil {
				s.fail(ferr)
				return
			}
			if werr != nil {
				s.closed(!fromClient, werr)
				return
			}
		}
		// Only now is buf done with.
		switch {
		case large == nil && n == len(small):
			large = bulkPool.Get().(*[]byte)
		case large != nil && n < readSize:
			bulkPool.Put(large)
			large = nil
		}
		if err != nil {
			s.closed(fromClient, err)
			return
		}
	}
}

func write(mu *sync.Mutex, c net.Conn, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	mu.Lock()
	defer mu.Unlock()
	_, err := c.Write(b)
	return err
}

// closed ends the session after a read or write error on one side.
func (s *session) closed(client bool, err error) {
	who := "host"
	if client {
		who = "client"
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		s.end(who+" closed", ResultOK, nil)
		return
	}
	s.end(who+" connection failed: "+err.Error(), ResultOK, nil)
}

// refusal is a policy decision that ends the session.
type refusal struct{ why string }

func (r *refusal) Error() string { return r.why }
func (r *refusal) Unwrap() error { return ErrRefused }

func refuse(format string, args ...any) error { return &refusal{fmt.Sprintf(format, args...)} }

func (s *session) fail(err error) {
	var r *refusal
	switch {
	case errors.As(err, &r):
		s.h.logger.Info("telnet session refused", "tenant", s.peer.Tenant, "source", s.peer.Source.String(), "why", r.why)
		s.end("refused: "+r.why, ResultRefused, err)
	case errors.Is(err, ErrNegotiationStorm):
		s.h.logger.Warn("telnet session ended: negotiation storm", "tenant", s.peer.Tenant, "source", s.peer.Source.String(),
			"err", err)
		s.end(err.Error(), ResultLimit, err)
	case errors.Is(err, ErrTooManyNego), errors.Is(err, ErrSubTooLong):
		s.end(err.Error(), ResultLimit, err)
	default:
		s.end(err.Error(), ResultProtocol, err)
	}
}

func (s *session) vetted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vetType && s.vetDev
}

// token decides what happens to one token of this direction.
func (d *direction) token(t Token) error {
	s := d.s
	switch t.Kind {
	case Data:
		if !s.dataPhase.Load() {
			if d.fromClient {
				// Nothing but negotiation reaches the host before the
				// policy accepted the terminal.
				if !s.vetted() {
					return refuse("data before the terminal was accepted")
				}
			} else if s.vetted() {
				s.dataPhase.Store(true)
			}
		}
	case Command:
		// IAC NOP, EOR, IP, BRK, AO … are part of the session, not of the
		// negotiation: from the client they reach the host only once the
		// terminal is accepted. Before that they are counted like
		// negotiation and dropped (clients send NOP keepalives early).
		if d.fromClient && !s.dataPhase.Load() && !s.vetted() {
			return d.countNego()
		}
	case Negotiation:
		if err := d.countNego(); err != nil {
			return err
		}
		if t.Opt == optStartTLS {
			// TLS between client and host would blind the policy: answer
			// for the other side and pass nothing on.
			switch t.Cmd {
			case cmdWILL:
				d.reply = append(d.reply, cmdIAC, cmdDONT, optStartTLS)
			case cmdDO:
				d.reply = append(d.reply, cmdIAC, cmdWONT, optStartTLS)
			}
			return nil
		}
	case Sub:
		if err := d.countNego(); err != nil {
			return err
		}
		keep, err := d.sub(t)
		if err != nil || !keep {
			return err
		}
	}
	d.out = append(d.out, t.Raw...)
	return nil
}

// countNego counts an option negotiation or sub-negotiation: before the
// data phase against the session's negotiation cap (both directions),
// after it, the client's against the storm bound. The host's are not
// bounded after the data phase: it is the tenant's own system.
func (d *direction) countNego() error {
	b := d.s.h.bounds
	if d.s.dataPhase.Load() {
		if d.fromClient && !d.storm.take(time.Now(), b.stormRate, b.stormBurst) {
			return fmt.Errorf("%w: over %g at once or %g a second", ErrNegotiationStorm, b.stormBurst, b.stormRate)
		}
		return nil
	}
	if int(d.s.negos.Add(1)) > b.maxNegotiations {
		return fmt.Errorf("%w: over %d", ErrTooManyNego, b.maxNegotiations)
	}
	return nil
}

// bucket is a token bucket; its zero value is full.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) take(now time.Time, rate, burst float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sub applies the policy to a sub-negotiation. It reports whether the
// token passes unchanged; a rewritten or dropped token has already put
// what replaces it into out or reply.
//
// Before the terminal is accepted, a client's sub-negotiation reaches the
// host only if it is the one the policy checks the terminal by:
// TERMINAL-TYPE IS, TN3270E DEVICE-TYPE REQUEST, and on tn5250 the
// NEW-ENVIRON list that names the device (RFC 4777 sends it before the
// terminal type). On tn3270 a NEW-ENVIRON IS is answered to the host as
// an empty list, so a host that asked is not left waiting and learns
// nothing (a USER= of the client's choice included); every other one is
// dropped.
func (d *direction) sub(t Token) (bool, error) {
	s := d.s
	if t.Opt == optStartTLS {
		return false, nil // never passed on, empty or not: see token
	}
	held := d.fromClient && !s.vetted()
	if len(t.Payload) > 0 {
		switch t.Opt {
		case optTTYPE:
			if d.fromClient && t.Payload[0] == ttypeIS {
				return d.terminalType(t.Payload[1:])
			}
		case optTN3270E:
			if s.h.proto != policy.ProtoTN3270 || len(t.Payload) < 2 || t.Payload[0] != tnDeviceType {
				break
			}
			if d.fromClient && t.Payload[1] == tnRequest {
				return d.deviceTypeRequest(t.Payload[2:])
			}
			if !d.fromClient && t.Payload[1] == tnIS {
				return d.deviceTypeIs(t.Payload[2:])
			}
		case optNewEnviron:
			if !d.fromClient || (t.Payload[0] != envIS && t.Payload[0] != envINFO) {
				break
			}
			if s.h.proto == policy.ProtoTN5250 {
				return d.environ(t.Payload)
			}
			keep, err := d.environ3270(t.Payload)
			if err != nil || !held {
				return keep, err
			}
			if t.Payload[0] == envIS {
				d.out = appendSub(d.out, optNewEnviron, []byte{envIS})
			}
			d.heldBack(t)
			return false, nil
		}
	}
	if held {
		d.heldBack(t)
		return false, nil
	}
	return true, nil
}

// heldBack notes a client sub-negotiation the host never sees because the
// terminal was not accepted yet.
func (d *direction) heldBack(t Token) {
	d.s.h.logger.Debug("telnet sub-negotiation held back before the terminal was accepted", "tenant", d.s.peer.Tenant,
		"source", d.s.peer.Source.String(), "option", t.Opt)
}

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
	if s.h.proto == policy.ProtoTN5250 {
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

// environ checks a TN5250 NEW-ENVIRON IS or INFO list: DEVNAME against the
// route and, when the route refuses auto sign-on, drops USER, IBMRSEED and
// IBMSUBSPW so the host shows its sign-on screen.
func (d *direction) environ(payload []byte) (bool, error) {
	s, rt := d.s, d.s.rt
	vars, err := parseEnviron(payload)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	devKnown := s.vetDev
	s.mu.Unlock()
	if !devKnown && !slices.ContainsFunc(vars, func(v envVar) bool { return strings.EqualFold(v.name, envDevName) }) {
		// The list carries the device's identity: without it, nothing of
		// it (a USER= above all) may reach the host before the device
		// was checked.
		return false, refuse("NEW-ENVIRON names no device and the route restricts devices")
	}
	seen := map[string]bool{}
	drop := false
	for _, v := range vars {
		up := strings.ToUpper(v.name)
		switch up {
		case envDevName, envUser, envRSeed, envSubPW:
			if seen[up] {
				return false, refuse("NEW-ENVIRON names %s twice", up)
			}
			seen[up] = true
		}
		switch {
		case up == envDevName:
			dev := string(v.value)
			if !validDevName(dev) {
				return false, refuse("device name %s is malformed", printable(v.value))
			}
			if !rt.devAllowed(dev) {
				return false, refuse("device name %q not allowed", dev)
			}
			s.mu.Lock()
			s.dev, s.vetDev = dev, true
			s.mu.Unlock()
		case up == envRSeed && v.hasValue && len(v.value) != rseedLength:
			return false, refuse("IBMRSEED of %d bytes, not %d", len(v.value), rseedLength)
		}
		if rt.refuseAutoSignOn && isAutoSignOn(v.name) {
			drop = true
		}
	}
	if !drop {
		return true, nil
	}
	p := []byte{payload[0]}
	var dropped []string
	for _, v := range vars {
		if isAutoSignOn(v.name) {
			dropped = append(dropped, strings.ToUpper(v.name))
			continue
		}
		p = append(p, v.raw...)
	}
	s.h.logger.Info("auto sign-on refused", "tenant", s.peer.Tenant, "source", s.peer.Source.String(), "dropped", dropped)
	d.out = appendSub(d.out, optNewEnviron, p)
	return false, nil
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
