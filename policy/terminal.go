package policy

import (
	"errors"
	"fmt"
)

// MaxTerminalType is the longest terminal type a Telnet client may name
// (TERMINAL-TYPE IS, TN3270E DEVICE-TYPE); real ones are a dozen
// characters or so ("IBM-3278-2-E", "IBM-3477-FC", "VIP7801").
const MaxTerminalType = 40

// ErrTerminalType marks a terminal_types entry that can match no terminal.
var ErrTerminalType = errors.New("terminal type pattern matches no terminal type")

// CheckTerminalType checks one terminal_types entry: a terminal type, or a
// pattern where '*' stands for any run of characters. A terminal type is
// printable ASCII without spaces and without '@' (which separates the LU
// in TN3270's "type@LU"), so an entry with anything else could never
// match, and a route listing it would refuse the terminal its admin meant
// to allow.
func CheckTerminalType(p string) error {
	if p == "" {
		return fmt.Errorf("%w: empty", ErrTerminalType)
	}
	fixed := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c <= ' ' || c > '~' || c == '@' {
			return fmt.Errorf("%w: %q holds %q (terminal types are printable ASCII without spaces or '@')", ErrTerminalType, p, c)
		}
		if c != '*' {
			fixed++
		}
	}
	if fixed > MaxTerminalType {
		return fmt.Errorf("%w: %q is longer than %d characters", ErrTerminalType, p, MaxTerminalType)
	}
	return nil
}

// VIPModel reports whether t names a Bull VIP terminal model as TNVIP
// clients send it in TERMINAL-TYPE IS (RFC 1921): "VIP7" and three digits,
// nothing before or after (VIP7800, VIP7801 …). It is what a tnvip route
// without terminal_types allows: another terminal type (a VT100, say)
// would get whatever the host offers other terminals, such as a line-mode
// session, which a tnvip listener is not there to carry; a type with
// anything appended (a mailbox name) needs a pattern of the route. Letters
// compare without case, as the route's patterns do.
func VIPModel(t string) bool {
	if len(t) != 7 || (t[0]|0x20) != 'v' || (t[1]|0x20) != 'i' || (t[2]|0x20) != 'p' || t[3] != '7' {
		return false
	}
	for i := 4; i < 7; i++ {
		if t[i] < '0' || t[i] > '9' {
			return false
		}
	}
	return true
}
