package policy

import (
	"errors"
	"testing"
)

func TestParseScope(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Scope
		err  bool
	}{
		{"global", Global, false},
		{"tenant:acme", Scope{Tenant: "acme"}, false},
		{"tenant:acme/prod", Scope{Tenant: "acme", Environment: "prod"}, false},
		{"", Scope{}, true},
		{"tenant:", Scope{}, true},
		{"tenant:/prod", Scope{}, true},
		{"tenant:acme/", Scope{}, true},
		{"tenant:acme/prod/x", Scope{}, true},
		{"acme", Scope{}, true},
		{"Global", Scope{}, true},
	} {
		got, err := ParseScope(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseScope(%q) = %+v, %v", tc.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrScope) {
			t.Errorf("ParseScope(%q) error %v is not ErrScope", tc.in, err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), tc.in)
		}
	}
}

func TestScopeCovers(t *testing.T) {
	acme, acmeProd, acmeDev, beta := Scope{Tenant: "acme"}, Scope{Tenant: "acme", Environment: "prod"},
		Scope{Tenant: "acme", Environment: "dev"}, Scope{Tenant: "beta"}
	for _, tc := range []struct {
		s, o Scope
		want bool
	}{
		{Global, Global, true}, {Global, acmeProd, true},
		{acme, acme, true}, {acme, acmeProd, true}, {acme, Global, false}, {acme, beta, false},
		{acmeProd, acmeProd, true}, {acmeProd, acme, false}, {acmeProd, acmeDev, false}, {acmeProd, Global, false},
	} {
		if got := tc.s.Covers(tc.o); got != tc.want {
			t.Errorf("%s covers %s = %v, want %v", tc.s, tc.o, got, tc.want)
		}
	}
}

func TestParseRole(t *testing.T) {
	for in, want := range map[string]Role{"viewer": RoleViewer, "publisher": RolePublisher, "admin": RoleAdmin} {
		if got, err := ParseRole(in); err != nil || got != want || got.String() != in {
			t.Errorf("ParseRole(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "root", "Admin", "operator"} {
		if _, err := ParseRole(in); !errors.Is(err, ErrRole) {
			t.Errorf("ParseRole(%q) = %v, want ErrRole", in, err)
		}
	}
	if !(RoleAdmin > RolePublisher && RolePublisher > RoleViewer && RoleViewer > RoleNone) {
		t.Error("roles are not ordered weakest first")
	}
}
