package policy

import "testing"

func TestCheckRoutePath(t *testing.T) {
	for _, p := range []string{"/", "/api", "/api/", "/api/v1", "/café"} {
		if err := CheckRoutePath(p); err != nil {
			t.Errorf("CheckRoutePath(%q) = %v, want nil", p, err)
		}
	}
	for _, p := range []string{"", "api", "//api", "/api//v1", "/api/.", "/api/../x", "/./x", `/a\b`, "/a;b", "/a%2fb", "/a\x00", "/a\x7f"} {
		if err := CheckRoutePath(p); err == nil {
			t.Errorf("CheckRoutePath(%q) = nil, want an error", p)
		}
	}
}
