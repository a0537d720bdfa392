package tunnel

import (
	"encoding/binary"
	"net"

	"github.com/hashicorp/yamux"
)

// yamux frame header: version, type, flags, stream id, length.
const (
	frameHeaderSize = 12
	frameTypeData   = 0
)

// wire is the tunnel's TLS connection as the multiplexer writes it. The
// multiplexer writes each frame in two calls, its 12-byte header and then
// its body; on a TLS connection that is two records and two system calls
// per frame, the first for 12 bytes. wire holds back the header of a data
// frame that has a body (its body is always the very next write, from
// the same sending goroutine) and writes both as one. Every other header
// (window updates, pings, a FIN or RST without data) goes at once.
type wire struct {
	net.Conn
	held []byte // a data frame's header, waiting for its body
	buf  []byte // header and body together, reused
}

func (w *wire) Write(b []byte) (int, error) {
	if len(w.held) == 0 {
		if len(b) == frameHeaderSize && b[1] == frameTypeData && binary.BigEndian.Uint32(b[8:12]) > 0 {
			w.held = append(w.held[:0], b...)
			return len(b), nil
		}
		return w.Conn.Write(b)
	}
	w.buf = append(append(w.buf[:0], w.held...), b...)
	w.held = w.held[:0]
	n, err := w.Conn.Write(w.buf)
	if cap(w.buf) > maxWireBuf {
		w.buf = nil
	}
	return max(n-frameHeaderSize, 0), err
}

// maxWireBuf bounds the buffer wire keeps between frames.
const maxWireBuf = 2 * streamWindow

// muxServer and muxClient run the multiplexer over a tunnel's connection.
func muxServer(c net.Conn, cfg *yamux.Config) (*yamux.Session, error) {
	return yamux.Server(&wire{Conn: c}, cfg)
}

func muxClient(c net.Conn, cfg *yamux.Config) (*yamux.Session, error) {
	return yamux.Client(&wire{Conn: c}, cfg)
}
