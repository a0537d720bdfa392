package httpproxy

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"strings"
)

// ErrAmbiguousFraming is the read error a FramingGuard returns once it has
// seen a request whose length two parsers could read differently. net/http
// answers such a read error with 400 and closes the connection.
var ErrAmbiguousFraming = errors.New("ambiguous HTTP/1 request framing")

// Bounds of the lines the guard reads; longer ones are refused. A line of
// the request head may be as long as the whole head net/http reads (the
// server's MaxHeaderBytes, HeaderReadLimit of at most 1 MiB, and its 4 KiB
// of slack), so that a head over the limit gets net/http's or the
// handler's 431, never the guard's 400; net/http stops reading there, which
// bounds the line.
const (
	maxGuardLine      = 2<<20 + 8<<10
	keptLineCap       = 64 << 10 // a longer line's buffer is not kept for the next
	maxChunkSizeLine  = 4 << 10
	maxGuardChunkSize = 1 << 40
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
type FramingGuard struct {
	net.Conn
	state   guardState
	line    []byte
	left    int64 // bytes left in a body or chunk
	inHead  int   // lines of the current head so far
	http10  bool
	cl, te  bool
	clValue int64
	teValue string
	upgrade bool
	err     error
	refused func(error)
}

// NewFramingGuard wraps c. refused, when set, is called once with the
// reason when the guard refuses the connection's input: net/http answers
// 400 and closes without telling anyone why.
func NewFramingGuard(c net.Conn, refused func(error)) *FramingGuard {
	return &FramingGuard{Conn: c, refused: refused}
}

// Read reads from the connection and follows the framing of what it read;
// once the guard refuses, it hands over what came before the offending line
// and then only the error.
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
			if g.refused != nil {
				g.refused(ferr)
			}
			if keep > 0 {
				return keep, nil
			}
			return 0, ferr
		}
	}
	return n, err
}

func (g *FramingGuard) fail(why string) error {
	return &framingError{why: why}
}

type framingError struct{ why string }

func (e *framingError) Error() string { return ErrAmbiguousFraming.Error() + ": " + e.why }
func (e *framingError) Unwrap() error { return ErrAmbiguousFraming }

// scan follows b; on a refusal it also returns how many bytes of b precede
// the offending line.
func (g *FramingGuard) scan(all []byte) (int, error) {
	b := all
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
			i := bytes.IndexByte(b, '\n')
			chunk := b
			if i >= 0 {
				chunk = b[:i]
			}
			limit := maxGuardLine
			if g.state == gChunkSize || g.state == gChunkCRLF {
				limit = maxChunkSizeLine
			}
			lineStart := max(off-len(g.line), 0)
			if len(g.line)+len(chunk) > limit {
				return lineStart, g.fail("line too long")
			}
			g.line = append(g.line, chunk...)
			if i < 0 {
				return 0, nil
			}
			b = b[i+1:]
			line := bytes.TrimSuffix(g.line, []byte("\r"))
			g.line = g.line[:0]
			if cap(g.line) > keptLineCap {
				g.line = nil // line still holds the bytes until endLine returns
			}
			if err := g.endLine(line); err != nil {
				return lineStart, err
			}
		}
	}
	return 0, nil
}

func (g *FramingGuard) endLine(line []byte) error {
	switch g.state {
	case gHead:
		return g.headLine(line)
	case gChunkCRLF:
		if len(line) != 0 {
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
		if len(line) == 0 {
			g.state = gHead
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return g.fail("obs-fold in trailer")
		}
	}
	return nil
}

func (g *FramingGuard) headLine(line []byte) error {
	if g.inHead == 0 {
		if len(line) == 0 {
			return nil // blank lines before a request line are tolerated
		}
		g.inHead = 1
		g.http10 = bytes.HasSuffix(line, []byte(" HTTP/1.0"))
		g.cl, g.te, g.upgrade, g.teValue, g.left = false, false, false, "", 0
		return nil
	}
	if len(line) > 0 {
		g.inHead++
		if line[0] == ' ' || line[0] == '\t' {
			return g.fail("obs-fold")
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return nil // net/http refuses it
		}
		switch strings.ToLower(string(name)) {
		case "content-length":
			v := strings.TrimSpace(string(value))
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || v[0] == '+' {
				return g.fail("bad content-length")
			}
			if g.cl && g.clValue != n {
				return g.fail("conflicting content-length")
			}
			g.cl, g.clValue = true, n
		case "transfer-encoding":
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
	g.inHead = 0
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
