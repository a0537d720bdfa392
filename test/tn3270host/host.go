// Package tn3270host is a tiny scripted TN3270 host for the demo and the
// end-to-end tests: enough for a real emulator (s3270) to show a screen.
package tn3270host

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// A tiny scripted TN3270 host (RFC 1576, without TN3270E): it negotiates
// TERMINAL-TYPE, END-OF-RECORD and BINARY with the terminal, sends one 3270
// screen as an Erase/Write record, then reads (and ignores) whatever the
// terminal sends until it goes away. Enough for a real emulator (s3270) to
// show a screen through gatehouse's TN3270 proxy.

// Telnet bytes (RFC 854, 856, 885, 1091).
const (
	tnIAC  = 255
	tnDONT = 254
	tnDO   = 253
	tnWONT = 252
	tnWILL = 251
	tnSB   = 250
	tnSE   = 240
	tnEOR  = 239 // end of record, the command

	optBinary = 0
	optTType  = 24
	optEOR    = 25

	ttypeIs   = 0
	ttypeSend = 1
)

// 3270 data stream bytes.
const (
	cmdEraseWrite = 0xF5
	wccRestore    = 0xC3 // reset, keyboard restore, reset MDT
	orderSBA      = 0x11 // set buffer address
	orderSF       = 0x1D // start field
	orderIC       = 0x13 // insert cursor

	attrUnprotected = 0x00
	attrProtected   = 0x20
	attrIntensified = 0x08
	screenColumns   = 80
)

// addrCodes encodes a 6-bit value as the graphic byte 3270 streams use for
// 12-bit buffer addresses and field attributes.
var addrCodes = [64]byte{
	0x40, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F,
	0x50, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0x5A, 0x5B, 0x5C, 0x5D, 0x5E, 0x5F,
	0x60, 0x61, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F,
	0xF0, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0x7A, 0x7B, 0x7C, 0x7D, 0x7E, 0x7F,
}

// ScreenTitle is the marker text of the screen; look for it in what
// s3270 read.
const ScreenTitle = "GATEHOUSE DEMO - INTERNAL TN3270 HOST"

var errNegotiation = errors.New("telnet negotiation failed")

// Serve plays the host on every connection ln accepts until ln is
// closed; session errors are written to logw.
func Serve(ln net.Listener, logw io.Writer) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if err := tn3270Session(c); err != nil {
				fmt.Fprintf(logw, "tn3270 %s: %v\n", c.RemoteAddr(), err)
			}
		}()
	}
}

// tn3270Session plays the host's side of one session.
func tn3270Session(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	r := &telnetReader{r: bufio.NewReader(c)}
	w := func(b ...byte) error { _, err := c.Write(b); return err }

	// 1. Ask for the terminal type.
	if err := w(tnIAC, tnDO, optTType); err != nil {
		return err
	}
	if err := r.expect(c, map[[2]byte]bool{{tnWILL, optTType}: false}); err != nil {
		return err
	}
	if err := w(tnIAC, tnSB, optTType, ttypeSend, tnIAC, tnSE); err != nil {
		return err
	}
	var ttype string
	for ttype == "" {
		ev, err := r.next()
		if err != nil {
			return err
		}
		if ev.kind == evSub && ev.opt == optTType && len(ev.data) > 1 && ev.data[0] == ttypeIs {
			ttype = string(ev.data[1:])
		} else if err := r.answer(c, ev); err != nil {
			return err
		}
	}
	// 2. 3270 mode: binary both ways, records ended by IAC EOR.
	if err := w(tnIAC, tnDO, optEOR, tnIAC, tnWILL, optEOR, tnIAC, tnDO, optBinary, tnIAC, tnWILL, optBinary); err != nil {
		return err
	}
	if err := r.expect(c, map[[2]byte]bool{
		{tnWILL, optEOR}: false, {tnDO, optEOR}: false, {tnWILL, optBinary}: false, {tnDO, optBinary}: false,
	}); err != nil {
		return err
	}
	// 3. One screen.
	if _, err := c.Write(append(demoScreen(ttype), tnIAC, tnEOR)); err != nil {
		return err
	}
	// 4. Whatever the terminal sends now (an AID after Enter) is ignored
	// until it disconnects or the deadline passes.
	for {
		if _, err := r.next(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// demoScreen builds an Erase/Write record: a title, two lines of text and
// one 8-character input field with the cursor in it.
func demoScreen(ttype string) []byte {
	b := []byte{cmdEraseWrite, wccRestore}
	sba := func(row, col int) {
		a := row*screenColumns + col
		b = append(b, orderSBA, addrCodes[(a>>6)&0x3F], addrCodes[a&0x3F])
	}
	field := func(row, col int, attr byte, text string) {
		sba(row, col)
		b = append(b, orderSF, addrCodes[attr])
		b = append(b, toEBCDIC(text)...)
	}
	field(0, 0, attrProtected|attrIntensified, ScreenTitle)
	field(2, 0, attrProtected, "THIS SCREEN CAME THROUGH XDP, NFTABLES, MUTUAL TLS AND THE GATEHOUSE PROXY.")
	field(4, 0, attrProtected, "TENANT ACME - TERMINAL TYPE "+strings.ToUpper(ttype))
	field(21, 0, attrProtected, "USERID ===>")
	field(21, 12, attrUnprotected, "")
	field(21, 21, attrProtected, "")
	sba(21, 13)
	b = append(b, orderIC)
	return b
}

// toEBCDIC maps the printable ASCII the demo screen uses to code page 037;
// anything else becomes '?'.
func toEBCDIC(s string) []byte {
	const punct = " .<(+|&!$*);-/,%_>?:#@'=\""
	codes := []byte{0x40, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F, 0x50, 0x5A, 0x5B, 0x5C, 0x5D, 0x5E, 0x60, 0x61,
		0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x7A, 0x7B, 0x7C, 0x7D, 0x7E, 0x7F}
	out := make([]byte, 0, len(s))
	for _, ch := range s {
		switch {
		case ch >= 'A' && ch <= 'I':
			out = append(out, byte(0xC1+ch-'A'))
		case ch >= 'J' && ch <= 'R':
			out = append(out, byte(0xD1+ch-'J'))
		case ch >= 'S' && ch <= 'Z':
			out = append(out, byte(0xE2+ch-'S'))
		case ch >= 'a' && ch <= 'i':
			out = append(out, byte(0x81+ch-'a'))
		case ch >= 'j' && ch <= 'r':
			out = append(out, byte(0x91+ch-'j'))
		case ch >= 's' && ch <= 'z':
			out = append(out, byte(0xA2+ch-'s'))
		case ch >= '0' && ch <= '9':
			out = append(out, byte(0xF0+ch-'0'))
		default:
			i := strings.IndexRune(punct, ch)
			if i < 0 {
				i = strings.IndexByte(punct, '?')
			}
			out = append(out, codes[i])
		}
	}
	return out
}

// telnetReader splits the terminal's byte stream into Telnet events.
type telnetReader struct {
	r        *bufio.Reader
	answered map[[2]byte]bool // options already refused, to never loop
}

type evKind int

const (
	evData evKind = iota
	evCmd         // IAC verb opt (DO/DONT/WILL/WONT) or a bare IAC command
	evSub         // IAC SB opt data IAC SE
)

type event struct {
	kind evKind
	verb byte
	opt  byte
	data []byte
}

func (t *telnetReader) next() (event, error) {
	b, err := t.r.ReadByte()
	if err != nil {
		return event{}, err
	}
	if b != tnIAC {
		return event{kind: evData, data: []byte{b}}, nil
	}
	verb, err := t.r.ReadByte()
	if err != nil {
		return event{}, err
	}
	switch verb {
	case tnIAC:
		return event{kind: evData, data: []byte{tnIAC}}, nil
	case tnDO, tnDONT, tnWILL, tnWONT:
		opt, err := t.r.ReadByte()
		return event{kind: evCmd, verb: verb, opt: opt}, err
	case tnSB:
		opt, err := t.r.ReadByte()
		if err != nil {
			return event{}, err
		}
		var data []byte
		for len(data) < 512 {
			c, err := t.r.ReadByte()
			if err != nil {
				return event{}, err
			}
			if c == tnIAC {
				c2, err := t.r.ReadByte()
				if err != nil {
					return event{}, err
				}
				if c2 == tnSE {
					return event{kind: evSub, opt: opt, data: data}, nil
				}
				c = c2 // IAC IAC: one 255
			}
			data = append(data, c)
		}
		return event{}, fmt.Errorf("%w: sub-negotiation too long", errNegotiation)
	default:
		return event{kind: evCmd, verb: verb}, nil
	}
}

// expect reads until every wanted (verb, option) arrived, answering
// anything else; a refusal of a wanted option ends the session.
func (t *telnetReader) expect(w io.Writer, want map[[2]byte]bool) error {
	refusal := map[byte]byte{tnWILL: tnWONT, tnDO: tnDONT}
	for {
		done := true
		for _, got := range want {
			done = done && got
		}
		if done {
			return nil
		}
		ev, err := t.next()
		if err != nil {
			return err
		}
		if ev.kind == evCmd {
			if _, ok := want[[2]byte{ev.verb, ev.opt}]; ok {
				want[[2]byte{ev.verb, ev.opt}] = true
				continue
			}
			for k := range want {
				if refusal[k[0]] == ev.verb && k[1] == ev.opt {
					return fmt.Errorf("%w: terminal refused option %d", errNegotiation, ev.opt)
				}
			}
		}
		if err := t.answer(w, ev); err != nil {
			return err
		}
	}
}

// answer refuses, once, an option the terminal offers or asks for that this
// host does not use.
func (t *telnetReader) answer(w io.Writer, ev event) error {
	if ev.kind != evCmd || (ev.verb != tnDO && ev.verb != tnWILL) {
		return nil
	}
	if t.answered == nil {
		t.answered = map[[2]byte]bool{}
	}
	k := [2]byte{ev.verb, ev.opt}
	if t.answered[k] {
		return nil
	}
	t.answered[k] = true
	reply := byte(tnWONT)
	if ev.verb == tnWILL {
		reply = tnDONT
	}
	_, err := w.Write([]byte{tnIAC, reply, ev.opt})
	return err
}
