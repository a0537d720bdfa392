package telnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
	"github.com/gatehouse-dmz/gatehouse/policy"
	"github.com/gatehouse-dmz/gatehouse/proxy/relay"
)

// readSize is each direction's own read buffer (relay.ReadBuffer's small
// one). Reads of a TLS connection are served from its decrypted record,
// so a small buffer costs calls, not copies, and keeps an idle session
// cheap.
const readSize = relay.SmallBufferSize

// outPool holds the buffers a direction assembles its output in; they are
// only held between a read and the write that follows it.
var outPool = sync.Pool{New: func() any { b := make([]byte, 0, readSize+64); return &b }}

// maxPooledOut is the largest output buffer returned to outPool.
const maxPooledOut = 40 << 10

// session is one client connection and its host connection.
type session struct {
	h      *Handler
	rt     *route
	peer   certs.Peer
	client net.Conn
	host   net.Conn
	start  time.Time

	clientMu sync.Mutex // writes to client: host output and the proxy's own replies
	hostMu   sync.Mutex // writes to host: client output and the proxy's own replies

	mu      sync.Mutex // the negotiated state below
	vetType bool       // terminal type (and LU) accepted
	vetDev  bool       // tn5250: DEVNAME accepted, or none required
	sends   int        // tn5250: the host's NEW-ENVIRON SENDs not answered yet
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

func newSession(h *Handler, rt *route, peer certs.Peer, client, host net.Conn, start time.Time) *session {
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
	out        []byte       // bytes for the other side
	reply      []byte       // the proxy's own answer to this side
	storm      relay.Bucket // the client's negotiations and commands after the data phase
}

func (s *session) pump(fromClient bool) {
	src, dst := s.host, s.client
	srcMu, dstMu := &s.hostMu, &s.clientMu
	if fromClient {
		src, dst = s.client, s.host
		srcMu, dstMu = &s.clientMu, &s.hostMu
	}
	d := &direction{s: s, fromClient: fromClient, p: Parser{MaxSub: s.h.bounds.maxSub}}
	// A read that fills the small buffer means a bulk transfer: the
	// ReadBuffer borrows the relay's pooled one until reads get short
	// again, so bulk moves in few writes and an idle session keeps only
	// the small one.
	var rb relay.ReadBuffer
	defer rb.Release()
	for {
		buf := rb.Next()
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
		rb.Done(n) // only now is buf done with
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
		// Afterwards those that make the host act (AYT, which it
		// answers; IP, AO, BRK, DM, EC, EL) count like negotiation too,
		// against the storm bound in the data phase; a record's end
		// (EOR), a keepalive (NOP) and GA are the data stream itself.
		if !d.fromClient {
			break
		}
		if !s.dataPhase.Load() && !s.vetted() {
			return d.countNego()
		}
		if t.Cmd != cmdEOR && t.Cmd != cmdNOP && t.Cmd != cmdGA {
			if err := d.countNego(); err != nil {
				return err
			}
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

// countNego counts an option negotiation, a sub-negotiation or a client
// command: before the data phase against the session's negotiation cap
// (both directions), after it, the client's against the storm bound. The
// host's are not bounded after the data phase: it is the tenant's own
// system.
func (d *direction) countNego() error {
	b := d.s.h.bounds
	if d.s.dataPhase.Load() {
		if d.fromClient && !d.storm.Take(time.Now(), b.stormRate, b.stormBurst) {
			return fmt.Errorf("%w: over %g at once or %g a second", ErrNegotiationStorm, b.stormBurst, b.stormRate)
		}
		return nil
	}
	if int(d.s.negos.Add(1)) > b.maxNegotiations {
		return fmt.Errorf("%w: over %d", ErrTooManyNego, b.maxNegotiations)
	}
	return nil
}

// sub applies the policy to a sub-negotiation. It reports whether the
// token passes unchanged; a rewritten or dropped token has already put
// what replaces it into out or reply.
//
// Before the terminal is accepted, a client's sub-negotiation reaches the
// host only if it is the one the policy checks the terminal by:
// TERMINAL-TYPE IS, TN3270E DEVICE-TYPE REQUEST, and on tn5250 the
// NEW-ENVIRON answer that names the device (RFC 4777 asks for it before the
// terminal type), rebuilt of the device variables alone (environ5250). On tn3270 a NEW-ENVIRON IS is answered to the host as
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
			if !d.fromClient {
				if t.Payload[0] == envSEND && s.h.proto == policy.ProtoTN5250 {
					s.mu.Lock()
					s.sends = min(s.sends+1, maxPending)
					s.mu.Unlock()
				}
				break
			}
			if t.Payload[0] != envIS && t.Payload[0] != envINFO {
				break
			}
			if s.h.proto == policy.ProtoTN5250 {
				return d.environ5250(t.Payload)
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
