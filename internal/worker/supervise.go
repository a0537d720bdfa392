package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// supervise waits for pr to end and starts its successor, with
// exponential backoff, until the pool closes. The listening sockets stay
// open here meanwhile: the kernel queues new connections for the
// successor. Nothing else changes: the kernel filters are not the
// workers' business.
func (pl *Pool) supervise(s *slot, pr *proc) {
	pl.wg.Add(1)
	go func() {
		defer pl.wg.Done()
		backoff := backoffMin
		for {
			select {
			case <-pr.exited:
			case <-pl.ctx.Done():
				return
			}
			pr.c.Close()
			pl.mu.Lock()
			if pl.closed || pl.stopping {
				s.proc = nil
				pl.mu.Unlock()
				return
			}
			s.proc = nil
			pl.mu.Unlock()
			if time.Since(pr.started) > backoffReset {
				backoff = backoffMin
			}
			pl.log.Error("worker died: its live sessions are lost; restarting it", "worker", s.idx, "pid", pr.pid,
				"exit", pr.state.String(), "restart_in", backoff)
			for {
				select {
				case <-pl.ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, backoffMax)
				next, err := pl.restart(s)
				if err == nil {
					pr = next
					break
				}
				pl.log.Error("worker restart failed", "worker", s.idx, "err", err, "retry_in", backoff)
			}
		}
	}()
}

// restart starts a successor for s and gives it the snapshot in force.
func (pl *Pool) restart(s *slot) (*proc, error) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed {
		return nil, errors.New("closed")
	}
	pr, err := pl.spawn(s)
	if err != nil {
		return nil, err
	}
	s.proc = pr
	if pl.policy != nil {
		err := pl.sendMaterial(pr, pl.material)
		if err == nil {
			err = pl.sendPolicy(s, pl.policy)
		}
		if err != nil {
			s.proc = nil
			pr.kill()
			<-pr.exited
			return nil, fmt.Errorf("generation %d: %w", pl.gen, err)
		}
	}
	s.restarts++
	pl.metrics.restarts.WithLabelValues(strconv.Itoa(s.idx)).Inc()
	return pr, nil
}

// WorkerStatus is one worker as status shows it.
type WorkerStatus struct {
	Index      int       `json:"index"`
	PID        int       `json:"pid,omitempty"`
	Started    time.Time `json:"started,omitzero"`
	Restarts   int       `json:"restarts"`
	Generation uint64    `json:"generation,omitempty"`
	Sessions   int       `json:"sessions"`
	Problem    string    `json:"problem,omitempty"`
}

// procs returns each slot's process (nil while restarting) and its restarts.
func (pl *Pool) procs() ([]*proc, []int) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	prs, rs := make([]*proc, len(pl.slots)), make([]int, len(pl.slots))
	for i, s := range pl.slots {
		prs[i], rs[i] = s.proc, s.restarts
	}
	return prs, rs
}

// Status asks every worker for its account.
func (pl *Pool) Status() []WorkerStatus {
	prs, rs := pl.procs()
	out := make([]WorkerStatus, len(prs))
	for i, pr := range prs {
		out[i] = WorkerStatus{Index: i, Restarts: rs[i]}
		if pr == nil {
			out[i].Problem = "restarting"
			continue
		}
		out[i].PID, out[i].Started = pr.pid, pr.started
		f, err := pr.request(MsgStatus, nil, 5*time.Second)
		var st Status
		if err == nil {
			err = decode(f, &st)
		}
		if err != nil {
			out[i].Problem = err.Error()
			continue
		}
		out[i].Generation, out[i].Sessions = st.Generation, st.Sessions
	}
	return out
}

// Refusals are the last refused handshakes of every worker, newest first,
// at most certs.RefusalsKept: status shows them as a single process's.
func (pl *Pool) Refusals() []certs.Refusal {
	prs, _ := pl.procs()
	var all []certs.Refusal
	for _, pr := range prs {
		if pr == nil {
			continue
		}
		f, err := pr.request(MsgStatus, nil, 5*time.Second)
		var st Status
		if err == nil {
			err = decode(f, &st)
		}
		if err != nil {
			continue // Status says which worker does not answer
		}
		all = append(all, st.Refusals...)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Time.After(all[j].Time) })
	return all[:min(len(all), certs.RefusalsKept)]
}

// Revalidate makes every worker re-check its live sessions against the
// certificates, CAs and CRLs in force (a revocation cut); it returns how
// many sessions they closed.
func (pl *Pool) Revalidate() (int, error) {
	prs, _ := pl.procs()
	n := 0
	var errs []error
	for i, pr := range prs {
		if pr == nil {
			continue
		}
		f, err := pr.request(MsgRevalidate, nil, pl.cfg.Timeout)
		var r Result
		if err == nil {
			err = decode(f, &r)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("worker %d: %w", i, err))
		}
		n += r.Closed
	}
	return n, errors.Join(errs...)
}

// Kill ends at once every session of tenant and env ("": all) in every
// worker, and returns how many.
func (pl *Pool) Kill(tenant, env string) int {
	return pl.cut(Cut{Tenant: tenant, Env: env})
}

// Drain lets the sessions of tenant and env finish within grace in every
// worker, and returns how many there were.
func (pl *Pool) Drain(tenant, env string, grace time.Duration) int {
	return pl.cut(Cut{Tenant: tenant, Env: env, Drain: true, GraceMS: grace.Milliseconds()})
}

func (pl *Pool) cut(c Cut) int {
	prs, _ := pl.procs()
	n := 0
	for i, pr := range prs {
		if pr == nil {
			continue
		}
		f, err := pr.request(MsgCut, c, pl.cfg.Timeout)
		var r Result
		if err == nil {
			err = decode(f, &r)
		}
		if err == nil && r.Error != "" {
			err = errors.New(r.Error)
		}
		if err != nil {
			pl.log.Error("worker could not cut sessions", "worker", i, "tenant", c.Tenant, "environment", c.Env, "err", err)
			continue
		}
		n += r.Closed
	}
	return n
}

// Shutdown drains every worker until ctx ends.
func (pl *Pool) Shutdown(ctx context.Context) error {
	// The enforcer's copies of the listening sockets close first: with
	// the workers' closed by their drain, the kernel refuses new
	// connections at once instead of queueing them for no one. No worker
	// is restarted from now on.
	pl.mu.Lock()
	pl.stopping = true
	for _, s := range pl.slots {
		for a, f := range s.socks {
			f.Close()
			delete(s.socks, a)
		}
	}
	pl.mu.Unlock()
	prs, _ := pl.procs()
	grace := time.Second
	if dl, ok := ctx.Deadline(); ok {
		grace = max(time.Until(dl), 0)
	}
	errs := make(chan error, len(prs))
	for i, pr := range prs {
		go func() {
			if pr == nil {
				errs <- nil
				return
			}
			_, err := pr.request(MsgDrain, Drain{GraceMS: grace.Milliseconds()}, grace+5*time.Second)
			if err != nil {
				err = fmt.Errorf("worker %d: %w", i, err)
			}
			errs <- err
		}()
	}
	var all []error
	for range prs {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// Close stops the workers (the control socket's end tells them to exit;
// those that do not are killed) and closes the sockets.
func (pl *Pool) Close() error {
	pl.mu.Lock()
	if pl.closed {
		pl.mu.Unlock()
		return nil
	}
	pl.closed = true
	pl.cancel()
	var prs []*proc
	for _, s := range pl.slots {
		if s.proc != nil {
			prs = append(prs, s.proc)
			s.proc.c.Close()
		}
		for _, f := range s.socks {
			f.Close()
		}
		s.socks = nil
	}
	pl.mu.Unlock()
	for _, pr := range prs {
		select {
		case <-pr.exited:
		case <-time.After(5 * time.Second):
			pr.kill()
			<-pr.exited
		}
	}
	pl.wg.Wait()
	return nil
}

// poolMetrics are the enforcer's own series about its workers.
type poolMetrics struct {
	restarts *prometheus.CounterVec
}

func newPoolMetrics() *poolMetrics {
	return &poolMetrics{restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gatehouse_worker_restarts_total", Help: "Worker processes restarted after they died, by worker index.",
	}, []string{"worker"})}
}

var upDesc = prometheus.NewDesc("gatehouse_workers_up", "Worker processes running and answering the control protocol.", nil, nil)

// Describe and Collect are the enforcer's own series about the workers.
func (pl *Pool) Describe(ch chan<- *prometheus.Desc) {
	pl.metrics.restarts.Describe(ch)
	ch <- upDesc
}

func (pl *Pool) Collect(ch chan<- prometheus.Metric) {
	pl.metrics.restarts.Collect(ch)
	prs, _ := pl.procs()
	up := 0
	for _, pr := range prs {
		if pr != nil {
			up++
		}
	}
	ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, float64(up))
}

// Gather gathers every worker's registry and merges them into one set of
// families with the names and labels a single process has: counters,
// histograms and gauges of counts are summed over the workers; the gauges
// of sameEverywhere describe state every worker shares (a certificate's
// expiry) and are taken once. The workers' Go runtime series are left out:
// the enforcer's own are the process's.
func (pl *Pool) Gather() ([]*dto.MetricFamily, error) {
	prs, _ := pl.procs()
	byName := map[string]*dto.MetricFamily{}
	series := map[string]*dto.Metric{}
	var errs []error
	for i, pr := range prs {
		if pr == nil {
			continue
		}
		f, err := pr.request(MsgMetrics, nil, 5*time.Second)
		var m Metrics
		if err == nil {
			err = decode(f, &m)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("worker %d: %w", i, err))
			continue
		}
		dec := expfmt.NewDecoder(bytes.NewReader(m.Families), expfmt.NewFormat(expfmt.TypeProtoDelim))
		for {
			mf := &dto.MetricFamily{}
			if err := dec.Decode(mf); err != nil {
				if !errors.Is(err, io.EOF) {
					errs = append(errs, fmt.Errorf("worker %d metrics: %w", i, err))
				}
				break
			}
			mergeFamily(byName, series, mf)
		}
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*dto.MetricFamily, 0, len(names))
	for _, n := range names {
		out = append(out, byName[n])
	}
	return out, errors.Join(errs...)
}
