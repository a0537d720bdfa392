package policy

import (
	"reflect"
	"testing"
	"time"
)

// TestRouteKey: a change of any route field, of the listener's name or of
// its protocol changes the key; equal routes have equal keys.
func TestRouteKey(t *testing.T) {
	base := Route{Tenant: "acme", Backend: "10.1.0.7:23", LUNames: []string{"A", "B"}}
	key := base.Key("mf", ProtoTN3270)
	if again := (Route{Tenant: "acme", Backend: "10.1.0.7:23", LUNames: []string{"A", "B"}}).Key("mf", ProtoTN3270); again != key {
		t.Errorf("equal routes, different keys:\n%s\n%s", key, again)
	}
	if base.Key("mf2", ProtoTN3270) == key {
		t.Error("the listener's name is not in the key")
	}
	if base.Key("mf", ProtoTN5250) == key {
		t.Error("the protocol is not in the key")
	}
	rt := reflect.TypeOf(base)
	for i := range rt.NumField() {
		f := rt.Field(i)
		changed := base
		v := reflect.ValueOf(&changed).Elem().Field(i)
		switch v.Interface().(type) {
		case string:
			v.SetString(v.String() + "x")
		case bool:
			v.SetBool(!v.Bool())
		case time.Duration:
			v.SetInt(v.Int() + 1)
		case []string:
			v.Set(reflect.ValueOf(append(v.Interface().([]string), "x")))
		default:
			t.Fatalf("Route.%s: a field of type %s this test cannot change: teach it", f.Name, f.Type)
		}
		if changed.Key("mf", ProtoTN3270) == key {
			t.Errorf("a change of Route.%s leaves the key as it was", f.Name)
		}
	}
	// Lists are written unambiguously: two names are not one with a space.
	joined := base
	joined.LUNames = []string{"A B"}
	if joined.Key("mf", ProtoTN3270) == key {
		t.Error(`LUNames ["A" "B"] and ["A B"] have one key`)
	}
}
