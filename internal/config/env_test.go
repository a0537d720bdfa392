package config

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// defaultScalars returns every scalar key of the embedded default with its
// value as YAML wrote it.
func defaultScalars(t *testing.T) map[string]any {
	t.Helper()
	v := viper.New()
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(Default)); err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for _, k := range v.AllKeys() {
		switch v.Get(k).(type) {
		case []any, map[string]any:
			continue // lists and tables: not scalar keys
		}
		out[k] = v.Get(k)
	}
	return out
}

// variant returns a value of the same type as def that differs from it
// and is valid where a valid one exists, as YAML text and as the
// environment would carry it.
func variant(key string, def any) string {
	switch d := def.(type) {
	case bool:
		return fmt.Sprint(!d)
	case int:
		if d > 1 {
			return fmt.Sprint(d - 1)
		}
		return fmt.Sprint(d + 1)
	case float64:
		return fmt.Sprint(d / 2)
	case string:
		if _, err := time.ParseDuration(d); err == nil && d != "" {
			return "17s"
		}
		if _, err := ParseByteSize(d); err == nil && strings.ContainsAny(d, "BKMG") {
			return "48KiB"
		}
	}
	return fmt.Sprint(def)
}

// withKey returns goodYAML with key set to the raw YAML scalar text.
func withKey(t *testing.T, key, text string) string {
	t.Helper()
	var doc map[string]any
	const dirToken = "DIRTOKEN"
	if err := yaml.Unmarshal([]byte(strings.ReplaceAll(goodYAML, "${DIR}", dirToken)), &doc); err != nil {
		t.Fatal(err)
	}
	var scalar any
	if err := yaml.Unmarshal([]byte(text), &scalar); err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(key, ".")
	m := doc
	for _, p := range parts[:len(parts)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[parts[len(parts)-1]] = scalar
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(out), dirToken, "${DIR}")
}

// TestEnvEveryScalarKey proves, for every scalar key of the embedded
// default, that GATEHOUSE_<KEY>=X gives what "key: X" in the file gives:
// the same configuration, or the same problems at the same key path. With
// the value as a string only, numbers failed ("expected type 'uint32', got
// unconvertible type 'string'").
func TestEnvEveryScalarKey(t *testing.T) {
	keys := defaultScalars(t)
	if len(keys) < 40 {
		t.Fatalf("only %d scalar keys found in the default", len(keys))
	}
	for _, key := range slices.Sorted(func(yield func(string) bool) {
		for k := range keys {
			if !yield(k) {
				return
			}
		}
	}) {
		for _, val := range []string{fmt.Sprint(keys[key]), variant(key, keys[key])} {
			name := EnvPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
			t.Run(key+"="+val, func(t *testing.T) {
				dir := fixture(t)
				fromEnv, envErr := parseIn(dir, goodYAML, map[string]string{name: val})
				fromFile, fileErr := parseIn(dir, withKey(t, key, yamlScalar(keys[key], val)), nil)
				if (envErr == nil) != (fileErr == nil) {
					t.Fatalf("env: %v\nfile: %v", envErr, fileErr)
				}
				if envErr != nil {
					if a, b := problemPaths(envErr), problemPaths(fileErr); !slices.Equal(a, b) {
						t.Fatalf("env problems at %v, file problems at %v:\n%v\n%v", a, b, envErr, fileErr)
					}
					return
				}
				// Where the keys came from differs by design: compare
				// what was decoded.
				fromEnv.sources, fromFile.sources = sources{}, sources{}
				if !reflect.DeepEqual(fromEnv, fromFile) {
					t.Fatalf("env and file differ for %s=%s", key, val)
				}
			})
		}
	}
}

// yamlScalar quotes a value the default wrote as a string, so that the
// file carries it as the environment does.
func yamlScalar(def any, val string) string {
	if _, ok := def.(string); ok {
		return fmt.Sprintf("%q", val)
	}
	return val
}

func problemPaths(err error) []string {
	var out []string
	for _, line := range strings.Split(err.Error(), "\n")[1:] {
		if path, _, ok := strings.Cut(line, ": "); ok {
			out = append(out, path)
		}
	}
	return out
}

func TestEnvNumbersAndDurations(t *testing.T) {
	cfg, err := parse(t, goodYAML, map[string]string{
		"GATEHOUSE_ENFORCEMENT_NEW_CONN_RATE_BURST":  "50",
		"GATEHOUSE_ENFORCEMENT_MAX_CONNS_PER_SOURCE": "64",
		"GATEHOUSE_LIMITS_HTTP_IDLE_TIMEOUT":         "45s",
		"GATEHOUSE_LIMITS_HTTP_MAX_BODY_SIZE":        "8MiB",
		"GATEHOUSE_LIMITS_CONNECTIONS":               "5000",
		"GATEHOUSE_ENFORCEMENT_FORWARD":              "true",
	})
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Policy()
	if p.Enforcement.NewConnRate.Burst != 50 || p.Enforcement.MaxConnsPerSource != 64 || !p.Enforcement.Forward {
		t.Errorf("enforcement = %+v", p.Enforcement)
	}
	lim := p.Listeners[0].Limits
	if lim.HTTP.IdleTimeout != 45*time.Second || lim.HTTP.MaxBodyBytes != 8<<20 || lim.MaxConns != 5000 {
		t.Errorf("limits = %+v", lim)
	}
	for env, want := range map[string]string{
		"GATEHOUSE_ENFORCEMENT_NEW_CONN_RATE_BURST": `enforcement.new_conn_rate.burst: GATEHOUSE_ENFORCEMENT_NEW_CONN_RATE_BURST="fifty": not an integer from 0 to 4294967295`,
		"GATEHOUSE_ENFORCEMENT_FORWARD":             `enforcement.forward: GATEHOUSE_ENFORCEMENT_FORWARD="fifty": not a boolean`,
		"GATEHOUSE_LIMITS_HTTP_MAX_BODY_SIZE":       `limits.http.max_body_size: GATEHOUSE_LIMITS_HTTP_MAX_BODY_SIZE="fifty": not a size`,
		"GATEHOUSE_LIMITS_HTTP_IDLE_TIMEOUT":        `limits.http.idle_timeout: GATEHOUSE_LIMITS_HTTP_IDLE_TIMEOUT="fifty": not a duration`,
		"GATEHOUSE_LIMITS_CONNECTIONS":              `limits.connections: GATEHOUSE_LIMITS_CONNECTIONS="fifty": not an integer`,
	} {
		if _, err := parse(t, goodYAML, map[string]string{env: "fifty"}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=fifty: %v, want %q", env, err, want)
		}
	}
	if _, err := parse(t, goodYAML, map[string]string{"GATEHOUSE_LIMITS_CONNECTIONS": "0"}); err == nil ||
		!strings.Contains(err.Error(), "limits.connections: must be at least 1, got 0") {
		t.Errorf("connections=0 from env: %v", err)
	}
}

// TestEveryTypeProblemReported: values of the wrong type are all listed at
// once, each with its key path and the value; before, the first one hid the
// others.
func TestEveryTypeProblemReported(t *testing.T) {
	y := goodYAML + "shutdown_grace: soon\nlimits:\n  connections: many\n  http: {idle_timeout: later, max_body_size: lots}\n"
	_, err := parse(t, y, nil)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		`shutdown_grace: not a duration (use e.g. 30s, 15m, 1h): "soon"`,
		`limits.connections: expected type 'int', got unconvertible type 'string'`,
		`limits.http.idle_timeout: not a duration (use e.g. 30s, 15m, 1h): "later"`,
		`limits.http.max_body_size: "lots" is not a size`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}
