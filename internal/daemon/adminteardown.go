package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gatehouse-dmz/gatehouse/enforcer/nft"
	"github.com/gatehouse-dmz/gatehouse/enforcer/xdp"
	"github.com/gatehouse-dmz/gatehouse/internal/admin"
	"github.com/gatehouse-dmz/gatehouse/policy"
)

// TeardownResult is the answer of POST /teardown: what the daemon removed
// before it exited.
type TeardownResult struct {
	Removed []string `json:"removed"`
}

// teardownState is a teardown asked over the admin API: the daemon stops
// (its enforcement loops first of all, which would put the filters back),
// then lifts its kernel layers, audits the outcome, answers, and exits.
type teardownState struct {
	mu        sync.Mutex
	cancel    context.CancelFunc // Run's; nil before Run
	requested bool
	c         *call         // the request, audited once the layers are lifted
	done      chan struct{} // closed when they are (or failed to be)
	answered  chan struct{} // closed when the request has its answer
	result    TeardownResult
	err       error
}

// answerWait bounds how long the daemon waits, lifted, for the teardown
// request's answer to be written before it exits.
const answerWait = 5 * time.Second

// teardownContext is Run's context, which a teardown request cancels.
func (d *Daemon) teardownContext(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	d.td.mu.Lock()
	d.td.cancel = cancel
	d.td.mu.Unlock()
	return ctx
}

// tearingDown reports whether a teardown was asked for.
func (d *Daemon) tearingDown() bool {
	d.td.mu.Lock()
	defer d.td.mu.Unlock()
	return d.td.requested
}

// serveTeardown is POST /teardown?confirm=yes (admin, global): it opens the
// gate, so the request must say so. It answers once the layers are lifted.
func (d *Daemon) serveTeardown(w http.ResponseWriter, r *http.Request) {
	c, ok := d.begin(w, r, admin.ActTeardown, policy.Global, nil)
	if !ok {
		return
	}
	if r.URL.Query().Get("confirm") != "yes" {
		err := errors.New("teardown lifts the XDP filter and the nftables table and stops the daemon: traffic is no longer filtered; ask again with confirm=yes")
		http.Error(w, err.Error(), http.StatusBadRequest)
		c.done(err)
		return
	}
	td := &d.td
	td.mu.Lock()
	var err error
	switch {
	case td.requested:
		err = errors.New("a teardown is already under way")
	case td.cancel == nil || d.stopping.Load():
		err = errors.New("the daemon is stopping; its filters stay (gatehouse teardown on the appliance lifts them)")
	}
	if err != nil {
		td.mu.Unlock()
		http.Error(w, err.Error(), http.StatusConflict)
		c.done(err)
		return
	}
	td.requested, td.c = true, c
	td.done, td.answered = make(chan struct{}), make(chan struct{})
	td.cancel()
	td.mu.Unlock()
	defer close(td.answered)
	d.log.Warn("teardown asked over the admin API: stopping, then lifting the XDP filter and the nftables table",
		"principal", c.p.Name(), "transport", c.p.Transport)
	<-td.done
	if td.err != nil {
		http.Error(w, "teardown: "+td.err.Error(), http.StatusInternalServerError)
		return
	}
	// The whole answer, with its length, is on the wire before the
	// daemon exits.
	b, _ := json.MarshalIndent(td.result, "", "  ")
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
}

// finishTeardown runs when Run has stopped everything and closed the
// components: without a teardown asked, it returns err. Else it lifts the
// XDP filter of the configured interface (detach, unpin) and then deletes
// table inet gatehouse, audits the outcome, closes the audit log, lets the
// request answer, and returns err with whatever failed.
func (d *Daemon) finishTeardown(err error) error {
	td := &d.td
	td.mu.Lock()
	requested := td.requested
	td.mu.Unlock()
	if !requested {
		return err
	}
	cfg := d.cfg.Load()
	var errs []error
	if cfg.Interface != "" {
		if e := xdp.Teardown(cfg.Enforcement.PinDir, cfg.Interface); e != nil {
			errs = append(errs, e)
		} else {
			pins := cfg.Enforcement.PinDir
			if pins == "" {
				pins = xdp.DefaultPinDir
			}
			td.result.Removed = append(td.result.Removed, fmt.Sprintf("the XDP filter on %s (pinned under %s)", cfg.Interface, pins))
		}
	}
	if e := nft.Teardown(0); e != nil {
		errs = append(errs, fmt.Errorf("nftables: %w", e))
	} else {
		td.result.Removed = append(td.result.Removed, "table inet gatehouse")
	}
	td.err = errors.Join(errs...)
	td.c.e.Args["removed"] = td.result.Removed
	td.c.done(td.err)
	if td.err != nil {
		d.log.Error("teardown: kernel filters not all lifted", "removed", td.result.Removed, "err", td.err)
	} else {
		d.log.Warn("teardown: kernel filters lifted; traffic is no longer filtered by gatehouse", "removed", td.result.Removed)
	}
	if a := d.audit.Swap(nil); a != nil {
		a.Close()
	}
	close(td.done)
	select {
	case <-td.answered:
	case <-time.After(answerWait):
	}
	return errors.Join(err, td.err)
}

// stopAdminServer ends srv when Run stops: at once, unless a teardown is
// under way, whose request stays open for its answer (new connections
// are refused).
func (d *Daemon) stopAdminServer(srv *http.Server) {
	if !d.tearingDown() {
		srv.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Load().ShutdownGrace+time.Minute)
	defer cancel()
	if srv.Shutdown(ctx) != nil {
		srv.Close()
	}
}
