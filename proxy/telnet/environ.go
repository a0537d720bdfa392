package telnet

import (
	"fmt"
	"strings"
)

// envVar is one entry of a NEW-ENVIRON IS or INFO list (RFC 1572 with the
// RFC 4777 variables). Name and Value are unescaped; raw is the entry as it
// stood in the decoded payload (ESC bytes kept), so unchanged entries are
// written back byte for byte.
type envVar struct {
	kind     byte // envVAR or envUSERVAR
	name     string
	value    []byte
	hasValue bool
	raw      []byte
	start    int // offset of the entry in the payload
}

// parseEnviron splits the body of a NEW-ENVIRON IS or INFO sub-negotiation
// (payload without the option byte, starting at IS/INFO). Bytes 0 to 3 are
// VAR, VALUE, ESC and USERVAR unless ESC precedes them, as RFC 4777 demands
// for binary values such as the eight bytes of IBMRSEED.
func parseEnviron(payload []byte) ([]envVar, error) {
	var (
		vars []envVar
		cur  *envVar
		name []byte
	)
	finish := func(end int) {
		if cur == nil {
			return
		}
		cur.name = string(name)
		vars = append(vars, *cur)
		vars[len(vars)-1].raw = payload[cur.start:end]
		cur = nil
	}
	body := payload[1:]
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch c {
		case envVAR, envUSERVAR:
			finish(i + 1)
			cur = &envVar{kind: c, start: i + 1}
			name = name[:0]
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("%w: NEW-ENVIRON list starts with %d", ErrMalformed, c)
		}
		switch c {
		case envVALUE:
			if cur.hasValue {
				return nil, fmt.Errorf("%w: NEW-ENVIRON %q has two VALUEs", ErrMalformed, string(name))
			}
			cur.hasValue = true
			cur.value = []byte{}
			continue
		case envESC:
			i++
			if i == len(body) {
				return nil, fmt.Errorf("%w: NEW-ENVIRON ends in ESC", ErrMalformed)
			}
			c = body[i]
		}
		if cur.hasValue {
			cur.value = append(cur.value, c)
		} else {
			name = append(name, c)
		}
	}
	finish(len(payload))
	return vars, nil
}

// Names of the RFC 4777 variables the policy looks at.
const (
	envDevName  = "DEVNAME"
	envUser     = "USER"
	envRSeed    = "IBMRSEED"
	envSubPW    = "IBMSUBSPW"
	rseedLength = 8
	maxDevName  = 10
	maxLUName   = 8
	maxTermType = 40
)

func isAutoSignOn(name string) bool {
	return strings.EqualFold(name, envUser) || strings.EqualFold(name, envRSeed) || strings.EqualFold(name, envSubPW)
}
