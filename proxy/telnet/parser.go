package telnet

import (
	"bytes"
	"errors"
	"fmt"
)

// Errors of the Telnet layer.
var (
	ErrSubTooLong  = errors.New("telnet sub-negotiation too long")
	ErrMalformed   = errors.New("malformed telnet command")
	ErrTooManyNego = errors.New("too many telnet negotiations before the data phase")
)

// DefaultMaxSub caps the wire length of one sub-negotiation, IAC SB and
// IAC SE included. TN3270E and RFC 4777 NEW-ENVIRON exchanges are well
// under a kilobyte.
const DefaultMaxSub = 4096

// keepSub is the largest buffer a parser keeps between sub-negotiations.
const keepSub = 512

// TokenKind says what a Token is.
type TokenKind uint8

const (
	// Data is a run of data bytes; Raw keeps IAC IAC doubled.
	Data TokenKind = iota
	// Command is IAC followed by one command byte (NOP, EOR, GA, BRK, …).
	Command
	// Negotiation is IAC WILL/WONT/DO/DONT option.
	Negotiation
	// Sub is IAC SB option … IAC SE.
	Sub
)

// Token is one unit of a Telnet stream. Its slices are valid only during
// the callback that receives it.
type Token struct {
	Kind TokenKind
	// Cmd is the command byte: WILL…DONT for a Negotiation, SB for a Sub.
	Cmd byte
	// Opt is the option of a Negotiation or Sub.
	Opt byte
	// Payload is a Sub's body after the option, IAC IAC undoubled.
	Payload []byte
	// Raw is the token exactly as on the wire.
	Raw []byte
}

type pstate uint8

const (
	stData  pstate = iota
	stIAC          // IAC seen
	stNeg          // IAC verb seen, option next
	stSBOpt        // IAC SB seen, option next
	stSB           // inside a sub-negotiation
	stSBIAC        // IAC inside a sub-negotiation
)

// Parser splits a Telnet byte stream into Tokens. It keeps whatever a read
// cut off in the middle of a command, so it never assumes that one read
// holds one command. The zero value is ready; MaxSub zero means
// DefaultMaxSub.
type Parser struct {
	MaxSub int

	st      pstate
	raw     []byte // wire bytes of the pending command
	payload []byte // decoded body of the pending sub-negotiation
	err     error  // sticky
}

var iacIAC = []byte{cmdIAC, cmdIAC}

// Pending reports whether the parser holds part of a command.
func (p *Parser) Pending() bool { return p.st != stData }

// Feed parses b, calling emit for every complete token in order. A partial
// command at the end of b is kept for the next call. The first error, from
// the stream or from emit, stops parsing and is returned by every later
// call.
func (p *Parser) Feed(b []byte, emit func(Token) error) error {
	if p.err != nil {
		return p.err
	}
	max := p.MaxSub
	if max <= 0 {
		max = DefaultMaxSub
	}
	fail := func(err error) error {
		p.err = err
		return err
	}
	for len(b) > 0 {
		switch p.st {
		case stData:
			// One run up to the next IAC that starts a command: escaped
			// 0xFF bytes (IAC IAC) stay inside the run.
			i := 0
			for {
				j := bytes.IndexByte(b[i:], cmdIAC)
				if j < 0 {
					i = len(b)
					break
				}
				i += j
				if i+1 < len(b) && b[i+1] == cmdIAC {
					i += 2
					continue
				}
				break
			}
			if i > 0 {
				if err := emit(Token{Kind: Data, Raw: b[:i]}); err != nil {
					return fail(err)
				}
			}
			b = b[i:]
			if len(b) > 0 {
				p.st = stIAC
				p.raw = append(p.raw[:0], cmdIAC)
				b = b[1:]
			}
			continue
		case stIAC:
			c := b[0]
			b = b[1:]
			switch {
			case c == cmdIAC:
				p.st = stData
				if err := emit(Token{Kind: Data, Raw: iacIAC}); err != nil {
					return fail(err)
				}
			case c == cmdSB:
				p.st = stSBOpt
				p.raw = append(p.raw, c)
			case c >= cmdWILL && c <= cmdDONT:
				p.st = stNeg
				p.raw = append(p.raw, c)
			default:
				p.st = stData
				p.raw = append(p.raw, c)
				if err := emit(Token{Kind: Command, Cmd: c, Raw: p.raw}); err != nil {
					return fail(err)
				}
			}
		case stNeg:
			p.raw = append(p.raw, b[0])
			b = b[1:]
			p.st = stData
			if err := emit(Token{Kind: Negotiation, Cmd: p.raw[1], Opt: p.raw[2], Raw: p.raw}); err != nil {
				return fail(err)
			}
		case stSBOpt:
			if b[0] == cmdIAC {
				return fail(fmt.Errorf("%w: sub-negotiation without option", ErrMalformed))
			}
			p.raw = append(p.raw, b[0])
			p.payload = p.payload[:0]
			b = b[1:]
			p.st = stSB
		case stSB:
			// Copy the run up to the next IAC at once.
			i := bytes.IndexByte(b, cmdIAC)
			if i < 0 {
				i = len(b)
			}
			if len(p.raw)+i > max {
				return fail(fmt.Errorf("%w: over %d bytes", ErrSubTooLong, max))
			}
			p.raw = append(p.raw, b[:i]...)
			p.payload = append(p.payload, b[:i]...)
			b = b[i:]
			if len(b) > 0 {
				p.st = stSBIAC
				b = b[1:]
			}
		case stSBIAC:
			c := b[0]
			b = b[1:]
			if len(p.raw)+2 > max {
				return fail(fmt.Errorf("%w: over %d bytes", ErrSubTooLong, max))
			}
			switch c {
			case cmdIAC:
				p.raw = append(p.raw, cmdIAC, cmdIAC)
				p.payload = append(p.payload, cmdIAC)
				p.st = stSB
			case cmdSE:
				p.raw = append(p.raw, cmdIAC, cmdSE)
				p.st = stData
				if err := emit(Token{Kind: Sub, Cmd: cmdSB, Opt: p.raw[2], Payload: p.payload, Raw: p.raw}); err != nil {
					return fail(err)
				}
				if cap(p.raw) > keepSub {
					// Do not let one long list weigh on an idle session.
					p.raw, p.payload = nil, nil
				}
			default:
				// Only IAC IAC and IAC SE mean something inside SB; anything
				// else would be read differently by different hosts.
				return fail(fmt.Errorf("%w: IAC %d inside sub-negotiation", ErrMalformed, c))
			}
		}
	}
	return nil
}

// appendEscaped appends b to dst with every IAC doubled.
func appendEscaped(dst, b []byte) []byte {
	for {
		i := bytes.IndexByte(b, cmdIAC)
		if i < 0 {
			return append(dst, b...)
		}
		dst = append(dst, b[:i+1]...)
		dst = append(dst, cmdIAC)
		b = b[i+1:]
	}
}

// appendSub appends IAC SB opt payload IAC SE, escaping the payload.
func appendSub(dst []byte, opt byte, payload []byte) []byte {
	dst = append(dst, cmdIAC, cmdSB, opt)
	dst = appendEscaped(dst, payload)
	return append(dst, cmdIAC, cmdSE)
}
