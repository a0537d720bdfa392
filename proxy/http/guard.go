package httpproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// ErrAmbiguousFraming is the read error a FramingGuard returns once it has
// seen a request whose length two parsers could read differently. net/http
// answers such a read error with 400 and closes the connection.
var ErrAmbiguousFraming = errors.New("ambiguous HTTP/1 request framing")

// ErrHeadTooLarge is why a FramingGuard ended a connection whose request
// head ran past its limit; the client is answered 431.
var ErrHeadTooLarge = errors.New("request head over max_header_size")

// Bounds of what the guard reads and keeps.
const (
	// headSlack is how far a request head may run past the listener's
	// max_header_size before the guard ends the connection: the slack
	// net/http gives its own limit, so that a head the handler judges
	// (and answers 431 with an access log line) is never cut short.
	headSlack = 4 << 10
	// maxGuardLine bounds a line without a head limit (library use).
	maxGuardLine = 2<<20 + 8<<10
	// keptPrefix is how much of a head or trailer line the guard keeps:
	// enough for a field's name and the values it reads (Content-Length,
	// Transfer-Encoding). The rest only passes through, so the guard never
	// holds a copy of the head (net/http holds one already).
	keptPrefix = 256
	// keptTail is how much of a line's end the guard keeps, for the
	// request line's HTTP version.
	keptTail          = 16
	maxChunkSizeLine  = 4 << 10
	maxGuardChunkSize = 1 << 40
	// After a 431 the rest of a head is read and dropped for at most this
	// long, and this much, before the connection closes.
	drainAfter431    = 500 * time.Millisecond
	maxDrainAfter431 = 256 << 10
)

type guardState int

const (
	gHead        guardState = iota // request line and header fields
	gBody                          // Content-Length body bytes
	gChunkSize                     // chunk-size [; ext] CRLF
	gChunkData                     // chunk bytes
	gChunkCRLF                     // CRLF after chunk data
	gTrailers                      // trailer fields after the last chunk
	gPassthrough                   // after an Upgrade request: not HTTP/1 any more
)

// FramingGuard wraps the plaintext of an HTTP/1.1 client connection and
// follows the framing of every request as the bytes arrive, before net/http
// parses them. net/http alone copes with smuggling by normalising (it drops
// Content-Length when Transfer-Encoding is present and unfolds obs-fold
// lines); gatehouse refuses instead, because an appliance in front of
// unknown backends should never guess. Refused: Content-Length together with
// Transfer-Encoding, any Transfer-Encoding but a single "chunked" on
// HTTP/1.1, obs-fold (a header or trailer line starting with space or tab),
// a malformed chunk size or a chunk not followed by CRLF. After a request
// that asks for an Upgrade the guard steps aside, since the connection may
// now carry another protocol; net/http still parses whatever HTTP follows.
//
// It also bounds the request head as it arrives: one that runs more than
// 4 KiB past the listener's max_header_size ends the connection with 431,
// so the head net/http holds stays near the limit (its own limit is twice
// that, for HTTP/2's sake: see HeaderReadLimit). Of each line the guard
// keeps only the start and the end it reads.
type FramingGuard struct {
	net.Conn
	maxHead int // the listener's max_header_size; 0: lines bounded by maxGuardLine only
	state   guardState
	line    []byte // the line's first keptPrefix bytes (chunk-size lines whole)
	lineLen int    // the line's length so far
	tail    [keptTail]byte
	tailLen int
	headLen int // bytes of the current request head so far
	left    int64
	inHead  int // lines of the current head so far
	http10  bool
	cl, te  bool
	clValue int64
	teValue string
	upgrade bool
	err     error
	refused func(error)
	// answer431 is set when the guard ended the connection for a head
	// over the limit: Close answers 431 first, once net/http, which
	// stays silent on that read error, is done with the connection.
	answer431 atomic.Bool
}

// NewFramingGuard wraps c. maxHead is the listener's max_header_size (0:
// no bound on the head). refused, when set, is called once with the reason
// when the guard refuses the connection's input: net/http answers 400 (or
// the guard 431) and closes without telling anyone why.
func NewFramingGuard(c net.Conn, maxHead int, refused func(error)) *FramingGuard {
	return &FramingGuard{Conn: c, maxHead: maxHead, refused: refused}
}

// Read reads from the connection and follows the framing of what it read;
// once the guard refuses, it hands over what came before the offending line
// (or head) and then only the error.
func (g *FramingGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.Conn.Read(p)
	if n > 0 && g.state != gPassthrough {
		if keep, ferr := g.scan(p[:n]); ferr != nil {
			// Hand over what came before the offending line, so net/http
			// is mid-request when it meets the error and answers 400 (an
			// error while it waits for a request closes silently).
			g.err = ferr
			if errors.Is(ferr, ErrHeadTooLarge) {
				// A read error net/http takes for a dead connection: it
				// closes without answering, and Close answers 431.
				g.err = &net.OpError{Op: "read", Net: "tcp", Err: ferr}
				g.answer431.Store(true)
			}
			if g.refused != nil {
				g.refused(ferr)
			}
			if keep > 0 {
				return keep, nil
			}
			return 0, g.err
		}
	}
	return n, err
}

// Close answers 431 first when the guard ended the connection for a head
// over the limit.
func (g *FramingGuard) Close() error {
	if g.answer431.CompareAndSwap(true, false) {
		const msg = "request header fields too large\n"
		g.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, err := io.WriteString(g.Conn, "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"+
			"Cache-Control: no-store\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(msg))+"\r\n\r\n"+msg)
		if err == nil {
			// The client is most likely still sending its head: read and
			// drop a little of it, so that closing with unread bytes does
			// not reset the connection before the client read the answer
			// (net/http waits for the same reason).
			g.Conn.SetReadDeadline(time.Now().Add(drainAfter431))
			io.CopyN(io.Discard, g.Conn, maxDrainAfter431)
		}
	}
	return g.Conn.Close()
}

func (g *FramingGuard) fail(why string) error {
	return &framingError{why: why}
}

type framingError struct{ why string }

func (e *framingError) Error() string { return ErrAmbiguousFraming.Error() + ": " + e.why }
func (e *framingError) Unwrap() error { return ErrAmbiguousFraming }

// scan follows b; on a refusal it also returns how many bytes of b precede
// the offending line, or the offending head.
func (g *FramingGuard) scan(all []byte) (int, error) {
	b := all
	headStart := 0 // where the current head began in all; 0 when in an earlier read
	for len(b) > 0 {
		off := len(all) - len(b)
		switch g.state {
		case gBody, gChunkData:
			k := min(int64(len(b)), g.left)
			g.left -= k
			b = b[k:]
			if g.left == 0 {
				if g.state == gBody {
					g.state = gHead
				} else {
					g.state = gChunkCRLF
				}
			}
		case gPassthrough:
			return 0, nil
		default:
			if g.state == gHead && g.inHead == 0 && g.lineLen == 0 {
				headStart = off // this line may begin a request
			}
			i := bytes.IndexByte(b, '\n')
			chunk := b
			if i >= 0 {
				chunk = b[:i]
			}
			lineStart := max(off-g.lineLen, 0)
			g.lineLen += len(chunk)
			if g.state == gHead {
				g.headLen += len(chunk)
				if i >= 0 {
					g.headLen++
				}
				if g.maxHead > 0 && g.headLen > g.maxHead+headSlack {
					return headStart, fmt.Errorf("%w: over %d bytes", ErrHeadTooLarge, g.maxHead)
				}
			}
			switch {
			case g.state == gChunkSize || g.state == gChunkCRLF:
				if g.lineLen > maxChunkSizeLine {
					return lineStart, g.fail("line too long")
				}
			case g.maxHead <= 0 && g.lineLen > maxGuardLine:
				return lineStart, g.fail("line too long")
			}
			g.keep(chunk)
			if i < 0 {
				return 0, nil
			}
			b = b[i+1:]
			err := g.endLine()
			g.line, g.lineLen, g.tailLen = g.line[:0], 0, 0
			if err != nil {
				return lineStart, err
			}
		}
	}
	return 0, nil
}

// keep takes the part of a line the guard reads: its start (all of a
// chunk-size line, bounded by maxChunkSizeLine) and its last bytes.
func (g *FramingGuard) keep(chunk []byte) {
	limit := keptPrefix
	if g.state == gChunkSize || g.state == gChunkCRLF {
		limit = maxChunkSizeLine
	}
	if room := limit - len(g.line); room > 0 {
		g.line = append(g.line, chunk[:min(room, len(chunk))]...)
	}
	if len(chunk) >= keptTail {
		g.tailLen = copy(g.tail[:], chunk[len(chunk)-keptTail:])
		return
	}
	if g.tailLen+len(chunk) > keptTail {
		drop := g.tailLen + len(chunk) - keptTail
		copy(g.tail[:], g.tail[drop:g.tailLen])
		g.tailLen -= drop
	}
	g.tailLen += copy(g.tail[g.tailLen:], chunk)
}

// kept returns the line without its CR when the guard kept it whole, or
// else its kept start.
func (g *FramingGuard) kept() (line []byte, whole bool) {
	if g.lineLen > len(g.line) {
		return g.line, false
	}
	return bytes.TrimSuffix(g.line, []byte("\r")), true
}

func (g *FramingGuard) endLine() error {
	line, whole := g.kept()
	blank := whole && len(line) == 0
	switch g.state {
	case gHead:
		return g.headLine(line, whole)
	case gChunkCRLF:
		if !blank {
			return g.fail("chunk data longer than its size")
		}
		g.state = gChunkSize
	case gChunkSize:
		size, _, _ := bytes.Cut(line, []byte(";"))
		size = bytes.TrimRight(size, " \t")
		n, err := strconv.ParseInt(string(size), 16, 64)
		if err != nil || n < 0 || n > maxGuardChunkSize || len(size) == 0 || size[0] == '+' || size[0] == '-' {
			return g.fail("bad chunk size")
		}
		if n == 0 {
			g.state = gTrailers
		} else {
			g.left = n
			g.state = gChunkData
		}
	case gTrailers:
		if blank {
			g.state = gHead
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return g.fail("obs-fold in trailer")
		}
	}
	return nil
}

// headLine reads a line of a request head: its kept start, and whether
// that is the whole line.
func (g *FramingGuard) headLine(line []byte, whole bool) error {
	if g.inHead == 0 {
		if whole && len(line) == 0 {
			g.headLen = 0
			return nil // blank lines before a request line are tolerated
		}
		g.inHead = 1
		end := bytes.TrimSuffix(g.tail[:g.tailLen], []byte("\r"))
		g.http10 = bytes.HasSuffix(end, []byte(" HTTP/1.0"))
		g.cl, g.te, g.upgrade, g.teValue, g.left = false, false, false, "", 0
		return nil
	}
	if !whole || len(line) > 0 {
		g.inHead++
		if line[0] == ' ' || line[0] == '\t' {
			return g.fail("obs-fold")
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return nil // net/http refuses it, or a name longer than any the guard reads
		}
		switch n := strings.ToLower(string(name)); n {
		case "content-length", "transfer-encoding":
			if !whole {
				// No real client sends hundreds of bytes here, and the
				// guard would have to guess at the rest.
				return g.fail(n + " field too long")
			}
			if n == "content-length" {
				v := strings.TrimSpace(string(value))
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || n < 0 || v[0] == '+' {
					return g.fail("bad content-length")
				}
				if g.cl && g.clValue != n {
					return g.fail("conflicting content-length")
				}
				g.cl, g.clValue = true, n
				return nil
			}
			if g.te {
				return g.fail("several transfer-encoding fields")
			}
			g.te = true
			g.teValue = strings.ToLower(strings.TrimSpace(string(value)))
		case "upgrade":
			g.upgrade = true
		}
		return nil
	}
	// End of the head: decide how the body is framed.
	g.inHead, g.headLen = 0, 0
	switch {
	case g.cl && g.te:
		return g.fail("content-length with transfer-encoding")
	case g.te && (g.http10 || g.teValue != "chunked"):
		return g.fail("transfer-encoding other than chunked on HTTP/1.1")
	case g.upgrade:
		g.state = gPassthrough
	case g.te:
		g.state = gChunkSize
	case g.cl && g.clValue > 0:
		g.left = g.clValue
		g.state = gBody
	}
	return nil
}
