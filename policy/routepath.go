package policy

import (
	"errors"
	"strings"
)

// ErrRoutePath is a route path the HTTP proxy could never match as written.
var ErrRoutePath = errors.New("route path must be a clean absolute path")

// CheckRoutePath checks the path prefix of an https or soap route. Requests
// are routed on their decoded, normalised path, so a route path is written
// decoded and clean: it begins with '/', and has no empty, "." or ".."
// segment (a trailing '/' aside), no backslash, ';', '%' or control
// character.
func CheckRoutePath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return ErrRoutePath
	}
	if strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f || strings.ContainsRune(`\;%`, r) }) {
		return ErrRoutePath
	}
	segs := strings.Split(strings.TrimSuffix(p[1:], "/"), "/")
	for _, seg := range segs {
		if seg == "." || seg == ".." || (seg == "" && p != "/") {
			return ErrRoutePath
		}
	}
	return nil
}
