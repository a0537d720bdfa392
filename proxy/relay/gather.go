package relay

import (
	"crypto/tls"
	"net"
)

// maxRecordPayload is the most plaintext one TLS record carries: a write
// longer than this becomes two records or more, which crypto/tls hands to
// the connection below it one Write each.
const maxRecordPayload = 16 << 10

// WriteGathered writes p to dst. When dst is a TLS connection over a
// CountingConn and p fills more than one record, the records leave in as
// few system calls as the pooled buffer allows (one for a relay's 32 KiB
// read) instead of one each: the CountingConn gathers them while the
// write runs and sends what it gathered before WriteGathered returns, so
// nothing is held past the write. Anything else is dst.Write.
func WriteGathered(dst net.Conn, p []byte) (int, error) {
	tc, ok := dst.(*tls.Conn)
	if !ok || len(p) <= maxRecordPayload {
		return dst.Write(p)
	}
	cc, ok := tc.NetConn().(*CountingConn)
	if !ok {
		return dst.Write(p)
	}
	cc.hold()
	n, err := tc.Write(p)
	if ferr := cc.release(); ferr != nil && err == nil {
		return 0, ferr
	}
	return n, err
}

// hold starts gathering the records written below a TLS write.
func (c *CountingConn) hold() {
	c.wmu.Lock()
	c.holds.Add(1)
	c.wmu.Unlock()
}

// release sends what was gathered since hold and stops gathering when no
// other hold is open.
func (c *CountingConn) release() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	err := c.flushLocked(nil)
	if c.holds.Add(-1) == 0 && c.pend != nil {
		Buffers.Put(c.pend)
		c.pend = nil
	}
	return err
}

// gatherLocked takes p while a hold is open: it is copied (crypto/tls
// builds the next record in the same buffer), or, when it no longer fits
// beside what is gathered, sent with it in one writev.
func (c *CountingConn) gatherLocked(p []byte) (int, error) {
	if c.pend == nil {
		c.pend = Buffers.Get()[:0]
	}
	if len(c.pend)+len(p) <= cap(c.pend) {
		c.pend = append(c.pend, p...)
		return len(p), nil
	}
	if err := c.flushLocked(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flushLocked sends what is gathered, followed by p, in one writev (plain
// writes below a connection that has none), and counts what left. An
// error is kept: the TLS stream is broken past it, so every later write
// fails with it too.
func (c *CountingConn) flushLocked(p []byte) error {
	if c.werr != nil {
		return c.werr
	}
	if len(c.pend) == 0 && len(p) == 0 {
		return nil
	}
	bufs := net.Buffers{c.pend, p}
	n, err := bufs.WriteTo(c.Conn)
	c.count(false, int(n))
	c.pend = c.pend[:0]
	if err != nil {
		c.werr = err
		c.broken.Store(true)
	}
	return err
}
