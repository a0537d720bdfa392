package rules

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"strconv"
	"time"
)

// Fetch timeouts for the client NewManager builds.
const (
	fetchTimeout = 2 * time.Minute
	dialTimeout  = 15 * time.Second
)

var errNotFound = errors.New("not found")

// fetcher reads a bundle's files from beside its manifest URL.
type fetcher struct {
	base   *url.URL
	client *http.Client
}

func newFetcher(source, caFile string, client *http.Client) (*fetcher, error) {
	u, err := url.Parse(source)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w", source, err)
	}
	switch {
	case u.Scheme == "file" && u.Path != "" && u.Host == "":
	case u.Scheme == "https" && u.Host != "":
	default:
		return nil, fmt.Errorf("source %q: want an https:// or file:/// URL of a manifest", source)
	}
	f := &fetcher{base: u, client: client}
	if u.Scheme == "https" && (client == nil || caFile != "") {
		f.client, err = httpClient(caFile)
		if err != nil {
			return nil, err
		}
	}
	return f, nil
}

// httpClient trusts only the CA in caFile when set, the system roots
// otherwise.
func httpClient(caFile string) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("feed CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("feed CA %s: no PEM certificate", caFile)
		}
		tc.RootCAs = pool
	}
	return &http.Client{
		Timeout: fetchTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: dialTimeout}).DialContext,
			TLSClientConfig:       tc,
			TLSHandshakeTimeout:   dialTimeout,
			ResponseHeaderTimeout: 30 * time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConns:          4,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" {
				return errors.New("redirect away from https refused")
			}
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}, nil
}

// validators are the HTTP cache validators of the last manifest fetched.
type validators struct {
	etag, lastModified string
}

// get reads the file name beside the manifest (the manifest itself when
// name is ManifestName), at most limit bytes. With val set it asks for the
// file only if it changed; notModified reports that it did not.
func (f *fetcher) get(ctx context.Context, name string, limit int64, val *validators) (data []byte, newVal validators, notModified bool, err error) {
	if f.base.Scheme == "file" {
		p := path.Join(path.Dir(f.base.Path), name)
		if name == ManifestName {
			p = f.base.Path
		}
		fh, err := os.Open(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil, validators{}, false, errNotFound
		}
		if err != nil {
			return nil, validators{}, false, err
		}
		defer fh.Close()
		data, err = readLimited(fh, limit)
		return data, validators{}, false, err
	}
	u := *f.base
	if name != ManifestName {
		u.Path = path.Join(path.Dir(f.base.Path), name)
		u.RawPath = ""
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, validators{}, false, err
	}
	if val != nil {
		if val.etag != "" {
			req.Header.Set("If-None-Match", val.etag)
		}
		if val.lastModified != "" {
			req.Header.Set("If-Modified-Since", val.lastModified)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, validators{}, false, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotModified && val != nil:
		return nil, *val, true, nil
	case resp.StatusCode == http.StatusNotFound:
		return nil, validators{}, false, errNotFound
	case resp.StatusCode != http.StatusOK:
		return nil, validators{}, false, fmt.Errorf("GET %s: %s", u.Redacted(), resp.Status)
	case resp.ContentLength > limit:
		return nil, validators{}, false, &Error{Reason: ReasonTooLarge, Err: fmt.Errorf("GET %s: %d bytes, limit %d", u.Redacted(), resp.ContentLength, limit)}
	}
	data, err = readLimited(resp.Body, limit)
	if err != nil {
		return nil, validators{}, false, fmt.Errorf("GET %s: %w", u.Redacted(), err)
	}
	return data, validators{etag: resp.Header.Get("ETag"), lastModified: resp.Header.Get("Last-Modified")}, false, nil
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, &Error{Reason: ReasonTooLarge, Err: errors.New("more than " + strconv.FormatInt(limit, 10) + " bytes")}
	}
	return data, nil
}
