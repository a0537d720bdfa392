package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatehouse-dmz/gatehouse/internal/config"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

func sc(s string) policy.Scope {
	v, err := policy.ParseScope(s)
	if err != nil {
		panic(err)
	}
	return v
}

// TestAuthorize walks the role table: each role at each scope, each action.
func TestAuthorize(t *testing.T) {
	g := func(role policy.Role, scope string) Principal {
		uid := uint32(1000)
		return Principal{Transport: "unix", UID: &uid, Grants: []Grant{{role, sc(scope)}}}
	}
	acme, acmeProd, beta := "tenant:acme", "tenant:acme/prod", "tenant:beta"
	for _, tc := range []struct {
		who    Principal
		action Action
		target string
		ok     bool
	}{
		{g(policy.RoleViewer, acme), ActStatus, acme, true},
		{g(policy.RoleViewer, acme), ActStatus, "global", true}, // answered filtered
		{g(policy.RoleViewer, acmeProd), ActMetrics, "global", true},
		{g(policy.RoleViewer, acme), ActFeedRefresh, "global", false},
		{g(policy.RoleViewer, "global"), ActReload, "global", false},
		{g(policy.RoleViewer, acme), ActDrain, acme, false},
		{g(policy.RolePublisher, acme), ActDrain, acme, true},
		{g(policy.RolePublisher, acme), ActDrain, acmeProd, true},
		{g(policy.RolePublisher, acme), ActDrain, beta, false},
		{g(policy.RolePublisher, acme), ActFeedRefresh, "global", false}, // feeds are global
		{g(policy.RolePublisher, "global"), ActFeedRefresh, "global", true},
		{g(policy.RolePublisher, "global"), ActFeedAccept, "global", true},
		{g(policy.RolePublisher, "global"), ActKill, acme, false},
		{g(policy.RolePublisher, "global"), ActReload, "global", false},
		{g(policy.RoleAdmin, acme), ActKill, acme, true},
		{g(policy.RoleAdmin, acme), ActKill, beta, false},
		{g(policy.RoleAdmin, acme), ActReload, "global", false},
		{g(policy.RoleAdmin, acmeProd), ActKill, acmeProd, true},
		{g(policy.RoleAdmin, acmeProd), ActKill, acme, false}, // the whole tenant is more than one environment
		{g(policy.RoleAdmin, acmeProd), ActKill, "tenant:acme/dev", false},
		{g(policy.RoleAdmin, "global"), ActReload, "global", true},
		{g(policy.RoleAdmin, "global"), ActKill, beta, true},
		{Principal{Transport: "https", Subject: "CN=x"}, ActStatus, "global", false},
	} {
		_, err := tc.who.Authorize(tc.action, sc(tc.target))
		if (err == nil) != tc.ok {
			t.Errorf("%v %s on %s: %v, want allowed=%v", tc.who.Grants, tc.action, tc.target, err, tc.ok)
		}
		var r *Refused
		if err != nil && (!errors.As(err, &r) || !errors.Is(err, ErrRefused)) {
			t.Errorf("refusal %v is not a *Refused", err)
		}
	}
	_, err := g(policy.RoleViewer, acme).Authorize(ActKill, sc(beta))
	want := "refused: sessions_kill on tenant:beta needs role admin at a scope covering tenant:beta; uid 1000 has viewer at tenant:acme"
	if err == nil || err.Error() != want {
		t.Errorf("refusal says %q, want %q", err, want)
	}
	_, err = g(policy.RolePublisher, acme).Authorize(ActFeedRefresh, sc(acme))
	if err == nil || !strings.Contains(err.Error(), "needs role publisher at global scope") {
		t.Errorf("feed refresh by a tenant publisher: %v", err)
	}
}

func TestSees(t *testing.T) {
	uid := uint32(5)
	p := Principal{UID: &uid, Grants: []Grant{{policy.RoleViewer, sc("tenant:acme/prod")}, {policy.RoleViewer, sc("tenant:beta")}}}
	for _, tc := range []struct {
		tenant, env string
		want        bool
	}{{"acme", "prod", true}, {"acme", "dev", false}, {"acme", "", false}, {"beta", "", true}, {"beta", "x", true}, {"gamma", "", false}, {"", "", false}} {
		if got := p.Sees(tc.tenant, tc.env); got != tc.want {
			t.Errorf("sees %q/%q = %v", tc.tenant, tc.env, got)
		}
	}
	if !p.SeesTenant("acme") || p.SeesTenant("gamma") || p.Global() {
		t.Error("SeesTenant/Global wrong")
	}
}

func TestRootAndSelfAreGlobalAdmins(t *testing.T) {
	r, err := Compile(config.Access{Grants: []config.AccessRule{{Role: "viewer", Scope: "global", Users: []string{"nobody"}}}}, 4242)
	if err != nil {
		t.Fatal(err)
	}
	for _, uid := range []uint32{0, 4242} {
		if _, err := r.Unix(uid, uid).Authorize(ActReload, policy.Global); err != nil {
			t.Errorf("uid %d: %v", uid, err)
		}
	}
	nobody := r.Unix(65534, 65534)
	if nobody.User != "nobody" {
		t.Errorf("uid 65534 named %q", nobody.User)
	}
	if _, err := nobody.Authorize(ActStatus, policy.Global); err != nil {
		t.Errorf("nobody, a global viewer: %v", err)
	}
	if _, err := nobody.Authorize(ActReload, policy.Global); err == nil {
		t.Error("nobody, a viewer, may reload")
	}
	if _, err := r.Unix(4243, 4243).Authorize(ActStatus, policy.Global); err == nil {
		t.Error("an unknown uid may read status")
	}
	if _, err := Compile(config.Access{Grants: []config.AccessRule{{Role: "viewer", Scope: "global", Users: []string{"no-such-user-gatehouse"}}}}, 0); err == nil {
		t.Error("an unknown user compiled")
	}
}

// TestGroupGrant: a grant to a group reaches a peer whose primary gid is
// that group's, as SO_PEERCRED reports it.
func TestGroupGrant(t *testing.T) {
	r, err := Compile(config.Access{Grants: []config.AccessRule{{Role: "publisher", Scope: "global", Groups: []string{"nogroup"}}}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Unix(65534, 65534).Authorize(ActFeedRefresh, policy.Global); err != nil {
		t.Errorf("nobody with gid nogroup: %v", err)
	}
	// uid 4243 has no passwd entry: only the kernel's gid counts.
	if _, err := r.Unix(4243, 65534).Authorize(ActFeedRefresh, policy.Global); err != nil {
		t.Errorf("a peer whose gid is nogroup's: %v", err)
	}
	if _, err := r.Unix(4243, 12345).Authorize(ActFeedRefresh, policy.Global); err == nil {
		t.Error("a peer outside nogroup got its grant")
	}
}

// TestAuditAppendOnly: the audit log is created 0600, a wider one is
// narrowed, lines are appended after what was there, and read back whole.
func TestAuditAppendOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, []byte("{\"earlier\":true}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := OpenAudit(path)
	if err != nil {
		t.Fatal(err)
	}
	uid := uint32(65534)
	p := Principal{Transport: "unix", UID: &uid, User: "nobody", Grants: []Grant{{policy.RoleViewer, sc("tenant:acme")}}}
	_, refusal := p.Authorize(ActReload, policy.Global)
	e := NewEntry(p, ActReload, "global", nil)
	e.Result, e.Reason = "refused", refusal.Error()
	if err := a.Record(e); err != nil {
		t.Fatal(err)
	}
	if err := a.Record(NewEntry(p, ActStatus, "tenant:acme", map[string]any{"n": 5})); err != nil {
		t.Fatal(err)
	}
	a.Close()
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("audit log mode %v, want 0600", fi.Mode().Perm())
	}
	f, _ := os.Open(path)
	defer f.Close()
	var lines []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 3 || lines[0]["earlier"] != true {
		t.Fatalf("audit log: %v", lines)
	}
	if l := lines[1]; l["action"] != "reload" || l["result"] != "refused" || l["uid"] != 65534.0 || l["user"] != "nobody" ||
		!strings.Contains(l["reason"].(string), "needs role admin at global scope") || l["transport"] != "unix" {
		t.Errorf("refusal line: %v", l)
	}
}

// TestRingTail: the access log tail keeps the newest lines and gives a
// viewer only its tenant's.
func TestRingTail(t *testing.T) {
	r := NewRing(4)
	var sink strings.Builder
	log := slog.New(r.Tee(slog.NewJSONHandler(&sink, nil))).With("log", "access")
	for i, tenant := range []string{"acme", "beta", "acme", "beta", "acme", "-"} {
		log.Info("request", "tenant", tenant, "n", i)
	}
	if strings.Count(sink.String(), "\n") != 6 {
		t.Errorf("the tee lost lines of the real log:\n%s", sink.String())
	}
	acme := r.Tail(10, func(tenant, _ string) bool { return tenant == "acme" })
	if len(acme) != 2 || !strings.Contains(string(acme[0]), `"n":2`) || !strings.Contains(string(acme[1]), `"n":4`) {
		t.Errorf("acme's tail: %s", acme)
	}
	for _, l := range acme {
		if strings.Contains(string(l), "beta") {
			t.Errorf("acme sees %s", l)
		}
	}
	all := r.Tail(2, func(string, string) bool { return true })
	if len(all) != 2 || !strings.Contains(string(all[1]), `"n":5`) {
		t.Errorf("global tail: %s", all)
	}
}
