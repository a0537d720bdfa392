package rules

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestFetchIfModifiedSince(t *testing.T) {
	const lm = "Mon, 02 Mar 2026 10:00:00 GMT"
	var conditional int
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("If-Modified-Since") == lm {
			conditional++
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Last-Modified", lm)
		w.Write([]byte(`{"serial": 1}`))
	}))
	defer srv.Close()
	f, err := newFetcher(srv.URL+"/x/"+ManifestName, "", srv.Client())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	data, val, nm, err := f.get(ctx, ManifestName, MaxManifestSize, nil)
	if err != nil || nm || string(data) != `{"serial": 1}` || val.lastModified != lm {
		t.Fatalf("first fetch: %q %+v %v %v", data, val, nm, err)
	}
	_, _, nm, err = f.get(ctx, ManifestName, MaxManifestSize, &val)
	if err != nil || !nm || conditional != 1 {
		t.Fatalf("second fetch: not modified %v, conditional %d, %v", nm, conditional, err)
	}
	if _, _, _, err := f.get(ctx, ManifestName, 5, nil); ReasonOf(err) != ReasonTooLarge {
		t.Errorf("size cap: %v", err)
	}
}

func TestNewFetcherRefusesSources(t *testing.T) {
	for _, s := range []string{"http://mirror.example.net/manifest.json", "ftp://x/y", "file://host/path", "https:///nohost", "manifest.json"} {
		if _, err := newFetcher(s, "", nil); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
}

func TestNextDelay(t *testing.T) {
	m := &Manager{}
	f := &feed{cfg: FeedConfig{Refresh: 10 * time.Minute}}
	within := func(d, want time.Duration) bool {
		return d >= want*9/10 && d <= want*11/10
	}
	if d := m.nextDelay(f, true); !within(d, 10*time.Minute) {
		t.Errorf("after success: %v", d)
	}
	for i, want := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 10 * time.Minute} {
		if d := m.nextDelay(f, false); !within(d, want) {
			t.Errorf("failure %d: %v, want about %v", i+1, d, want)
		}
	}
	if d := m.nextDelay(f, true); !within(d, 10*time.Minute) {
		t.Errorf("success resets the backoff: %v", d)
	}
	if d := m.nextDelay(&feed{}, true); !within(d, DefaultRefresh) {
		t.Errorf("default refresh: %v", d)
	}
}
