package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Role is what an admin principal may do; each role may do everything the
// ones below it may.
type Role int

// The roles, weakest first.
const (
	RoleNone Role = iota
	RoleViewer
	RolePublisher
	RoleAdmin
)

// ParseRole reads admin, publisher or viewer.
func ParseRole(s string) (Role, error) {
	switch s {
	case "viewer":
		return RoleViewer, nil
	case "publisher":
		return RolePublisher, nil
	case "admin":
		return RoleAdmin, nil
	}
	return RoleNone, fmt.Errorf("%w: %q (want admin, publisher or viewer)", ErrRole, s)
}

func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RolePublisher:
		return "publisher"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// MarshalText writes the role's name.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// Errors of ParseRole and ParseScope.
var (
	ErrRole  = errors.New("unknown role")
	ErrScope = errors.New("bad scope")
)

// Scope is where a grant applies: everywhere (the zero Scope), one tenant,
// or one environment of one tenant.
type Scope struct {
	Tenant      string
	Environment string
}

// Global is the scope of everything.
var Global = Scope{}

// ParseScope reads "global", "tenant:ID" or "tenant:ID/ENVIRONMENT". It
// checks the syntax only; whether the tenant and environment exist is the
// configuration's to check.
func ParseScope(s string) (Scope, error) {
	if s == "global" {
		return Global, nil
	}
	rest, ok := strings.CutPrefix(s, "tenant:")
	if !ok || rest == "" {
		return Scope{}, fmt.Errorf("%w: %q (want global, tenant:ID or tenant:ID/ENVIRONMENT)", ErrScope, s)
	}
	t, env, hasEnv := strings.Cut(rest, "/")
	if t == "" || (hasEnv && (env == "" || strings.Contains(env, "/"))) {
		return Scope{}, fmt.Errorf("%w: %q (want global, tenant:ID or tenant:ID/ENVIRONMENT)", ErrScope, s)
	}
	return Scope{Tenant: t, Environment: env}, nil
}

// IsGlobal reports whether s is the scope of everything.
func (s Scope) IsGlobal() bool { return s.Tenant == "" }

// Covers reports whether everything in o is also in s.
func (s Scope) Covers(o Scope) bool {
	switch {
	case s.IsGlobal():
		return true
	case s.Tenant != o.Tenant:
		return false
	}
	return s.Environment == "" || s.Environment == o.Environment
}

func (s Scope) String() string {
	switch {
	case s.IsGlobal():
		return "global"
	case s.Environment == "":
		return "tenant:" + s.Tenant
	}
	return "tenant:" + s.Tenant + "/" + s.Environment
}

// MarshalText writes the scope as ParseScope reads it.
func (s Scope) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads the scope as ParseScope does.
func (s *Scope) UnmarshalText(b []byte) error {
	v, err := ParseScope(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
