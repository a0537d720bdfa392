package worker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// Version is the control protocol's version. Both sides send it in their
// hello and refuse any other.
const Version = 1

// MaxFrame bounds one control message: a frame announcing more is refused
// and the peer is treated as broken. It is sized for certificate material
// (MsgFiles): one file of up to MaxMaterialFile rides in one frame, base64
// in JSON (4/3 of it) plus its name.
const MaxFrame = 24 << 20

// MaxMaterialFile bounds one file the enforcer hands the workers: server
// certificates and keys are kilobytes, the largest public CRLs a few MiB.
const MaxMaterialFile = 16 << 20

// maxFDs bounds the descriptors one message may carry.
const maxFDs = 256

// Message types. The enforcer sends hello, policy, drain, revalidate,
// status and metrics; the worker answers hello (ready), result, status and
// metrics, and may send block on its own. Every request carries a Seq the
// answer repeats.
const (
	MsgHello      = "hello"      // both ways, first: Hello
	MsgFiles      = "files"      // enforcer → worker: Material, the certificate material the policy names
	MsgPolicy     = "policy"     // enforcer → worker: Policy, with new listener sockets as SCM_RIGHTS
	MsgDrain      = "drain"      // enforcer → worker: Drain
	MsgRevalidate = "revalidate" // enforcer → worker: re-check every live session (a revocation cut)
	MsgCut        = "cut"        // enforcer → worker: Cut, kill or drain one tenant's (and environment's) sessions
	MsgStatus     = "status"     // both ways: request empty, answer Status
	MsgMetrics    = "metrics"    // both ways: request empty, answer Metrics
	MsgResult     = "result"     // worker → enforcer: Result of policy, drain, revalidate
	MsgBlock      = "block"      // worker → enforcer: Block (a report; the enforcer decides)
)

// Frame is one control message: a type, a sequence number and a typed body.
type Frame struct {
	Type string          `json:"type"`
	Seq  uint64          `json:"seq,omitempty"`
	Body json.RawMessage `json:"body,omitempty"`
}

// Hello opens the conversation. The enforcer's hello says how the worker
// confines itself and logs; the worker's hello says it is confined and ready.
type Hello struct {
	Version int `json:"version"`
	// Enforcer → worker.
	Index     int      `json:"index,omitempty"`
	UID       int      `json:"uid,omitempty"`
	GID       int      `json:"gid,omitempty"`
	ReadOnly  []string `json:"read_only,omitempty"`
	ReadWrite []string `json:"read_write,omitempty"`
	LogFormat string   `json:"log_format,omitempty"`
	LogLevel  string   `json:"log_level,omitempty"`
	// TicketDir is where the worker keeps its session-ticket keys: the
	// directory the enforcer opened and passed as TicketFD, so that the
	// worker reaches it without search permission on state_dir.
	TicketDir string `json:"ticket_dir,omitempty"`
	// Worker → enforcer.
	PID         int `json:"pid,omitempty"`
	LandlockABI int `json:"landlock_abi,omitempty"`
	Seccomp     int `json:"seccomp_syscalls,omitempty"`
}

// Policy hands a worker a policy snapshot. Sockets names the listen
// address of each descriptor passed with the message, in order.
type Policy struct {
	Policy  json.RawMessage `json:"policy"`
	Sockets []string        `json:"sockets,omitempty"`
}

// Material hands a worker the content of files the policy names (the worker
// reads none itself). They add to or replace what it holds; after a policy
// is applied the worker forgets the files it does not name.
type Material struct {
	Files []certs.File `json:"files"`
}

// Drain asks the worker to stop accepting and let sessions end within
// GraceMS milliseconds.
type Drain struct {
	GraceMS int64 `json:"grace_ms"`
}

// Cut ends the sessions of a tenant (all of them: "") and environment
// (all: ""): at once, or by drain within GraceMS.
type Cut struct {
	Tenant  string `json:"tenant"`
	Env     string `json:"environment"`
	Drain   bool   `json:"drain,omitempty"`
	GraceMS int64  `json:"grace_ms,omitempty"`
}

// Result answers policy, drain, revalidate and cut.
type Result struct {
	Error  string `json:"error,omitempty"`
	Closed int    `json:"closed,omitempty"` // revalidate and cut: sessions ended or draining
}

// Status is a worker's own account.
type Status struct {
	Generation uint64 `json:"generation"`
	Sessions   int    `json:"sessions"`
	// Refusals are the worker's last refused handshakes, newest first.
	Refusals []certs.Refusal `json:"refusals,omitempty"`
}

// Metrics carries the worker's registry in the Prometheus
// length-delimited protobuf format.
type Metrics struct {
	Families []byte `json:"families"`
}

// Block reports a source the worker saw misbehave.
type Block struct {
	Addr    string `json:"addr"`
	Reason  string `json:"reason"`
	Seconds int64  `json:"seconds"`
}

// Errors of the protocol.
var (
	ErrFrameTooLarge = errors.New("control frame too large")
	ErrVersion       = errors.New("unsupported control protocol version")
	ErrUnexpected    = errors.New("unexpected control message")
)

// conn is one end of the control socketpair: frames are a 4-byte
// big-endian length and a JSON Frame; descriptors ride on the first byte
// of their frame as SCM_RIGHTS.
type conn struct {
	uc  *net.UnixConn
	wmu sync.Mutex
	buf []byte // bytes read but not yet consumed
	fds []int  // descriptors received but not yet claimed
}

func newConn(f *os.File) (*conn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("control descriptor is a %T, want a unix socket", c)
	}
	return &conn{uc: uc}, nil
}

func (c *conn) Close() error { return c.uc.Close() }

// send writes one frame with body v and the descriptors fds.
func (c *conn) send(typ string, seq uint64, v any, fds ...int) error {
	var body json.RawMessage
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		body = b
	}
	b, err := json.Marshal(Frame{Type: typ, Seq: seq, Body: body})
	if err != nil {
		return err
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("%s: %w (%d bytes)", typ, ErrFrameTooLarge, len(b))
	}
	msg := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	msg = append(msg, b...)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(fds) > 0 {
		if _, _, err := c.uc.WriteMsgUnix(msg[:1], unix.UnixRights(fds...), nil); err != nil {
			return err
		}
		msg = msg[1:]
	}
	_, err = c.uc.Write(msg)
	return err
}

// fill reads until buf holds n bytes, collecting passed descriptors.
func (c *conn) fill(n int) error {
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	for len(c.buf) < n {
		b := make([]byte, 64<<10)
		k, oobn, flags, _, err := c.uc.ReadMsgUnix(b, oob)
		// On a failed read the counts can be -1 (a socket closed under
		// the reader): nothing was read.
		k, oobn = max(k, 0), max(oobn, 0)
		if oobn > 0 {
			if flags&unix.MSG_CTRUNC != 0 {
				return errors.New("control message: descriptors truncated")
			}
			msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
			if perr != nil {
				return perr
			}
			for _, m := range msgs {
				fds, perr := unix.ParseUnixRights(&m)
				if perr != nil {
					return perr
				}
				c.fds = append(c.fds, fds...)
			}
		}
		c.buf = append(c.buf, b[:k]...)
		if err != nil {
			if errors.Is(err, io.EOF) && len(c.buf) > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if k == 0 {
			return io.EOF
		}
	}
	return nil
}

// recv reads one frame; fds are the descriptors that came with it or
// before it (the caller must close those it does not use).
func (c *conn) recv() (Frame, []int, error) {
	if err := c.fill(4); err != nil {
		return Frame{}, c.takeFDs(), err
	}
	n := binary.BigEndian.Uint32(c.buf)
	if n > MaxFrame {
		return Frame{}, c.takeFDs(), fmt.Errorf("%w: %d bytes announced", ErrFrameTooLarge, n)
	}
	if err := c.fill(4 + int(n)); err != nil {
		return Frame{}, c.takeFDs(), err
	}
	var f Frame
	dec := json.NewDecoder(bytes.NewReader(c.buf[4 : 4+n]))
	dec.DisallowUnknownFields()
	err := dec.Decode(&f)
	c.buf = append(c.buf[:0], c.buf[4+n:]...)
	if err == nil && f.Type == "" {
		err = errors.New("frame without a type")
	}
	if err != nil {
		return Frame{}, c.takeFDs(), fmt.Errorf("malformed control frame: %w", err)
	}
	return f, c.takeFDs(), nil
}

func (c *conn) takeFDs() []int {
	fds := c.fds
	c.fds = nil
	return fds
}

// decode reads a frame's body strictly into v.
func decode(f Frame, v any) error {
	dec := json.NewDecoder(bytes.NewReader(f.Body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed %s body: %w", f.Type, err)
	}
	return nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
