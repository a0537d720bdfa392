package worker

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/gatehouse-dmz/gatehouse/certs"
)

// readMaterial reads every file of paths, as the enforcer (root) can. A
// file that cannot be read is recorded with its error, which the worker
// then meets as certs would meet it; only a file too large to hand over is
// an error here.
func readMaterial(paths []string) (map[string]certs.File, error) {
	out := make(map[string]certs.File, len(paths))
	for _, p := range paths {
		if _, ok := out[p]; ok {
			continue
		}
		f := certs.ReadFileForSnapshot(p)
		if len(f.Data) > MaxMaterialFile {
			return nil, fmt.Errorf("%s: %d bytes, more than the %d the workers are handed", p, len(f.Data), MaxMaterialFile)
		}
		out[f.Path] = f
	}
	return out, nil
}

// sendMaterial hands pr the files of mat, in as few frames as MaxFrame
// allows, and waits for each answer. pl.mu is held.
func (pl *Pool) sendMaterial(pr *proc, mat map[string]certs.File) error {
	var batch []certs.File
	size := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		f, err := pr.request(MsgFiles, Material{Files: batch}, pl.cfg.Timeout)
		batch, size = nil, 0
		if err != nil {
			return fmt.Errorf("handing over certificate material: %w", err)
		}
		var r Result
		if err := decode(f, &r); err != nil {
			pr.broken(err)
			return err
		}
		if r.Error != "" {
			return fmt.Errorf("handing over certificate material: %s", r.Error)
		}
		return nil
	}
	for _, p := range slices.Sorted(maps.Keys(mat)) {
		f := mat[p]
		n := len(f.Data)*4/3 + len(f.Path) + len(f.Err) + 256
		if size+n > MaxFrame-64<<10 {
			if err := flush(); err != nil {
				return err
			}
		}
		batch = append(batch, f)
		size += n
	}
	return flush()
}

// watchMaterial looks at the material's files every Poll and hands the
// workers those whose content changed: the workers' own watch then
// reloads them as a process reading the disk would.
func (pl *Pool) watchMaterial() {
	defer pl.wg.Done()
	t := time.NewTicker(pl.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-pl.ctx.Done():
			return
		case <-t.C:
		}
		pl.refreshMaterial()
	}
}

// refreshMaterial re-reads the files that changed and hands them over.
func (pl *Pool) refreshMaterial() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed || pl.material == nil {
		return
	}
	changed := map[string]certs.File{}
	for p, was := range pl.material {
		// Unchanged size, mtime and mode: not read again.
		if fi, err := os.Stat(p); err == nil && was.Err == "" && fi.Size() == int64(len(was.Data)) &&
			fi.ModTime().Equal(was.ModTime) && uint32(fi.Mode()) == was.Mode {
			continue
		}
		now := certs.ReadFileForSnapshot(p)
		if len(now.Data) > MaxMaterialFile {
			pl.log.Error("a certificate file grew too large to hand to the workers: they keep the previous content",
				"file", p, "bytes", len(now.Data), "limit", MaxMaterialFile)
			continue
		}
		if now.Err != was.Err || now.Mode != was.Mode || !now.ModTime.Equal(was.ModTime) || !bytes.Equal(now.Data, was.Data) {
			changed[p] = now
		}
	}
	if len(changed) == 0 {
		return
	}
	var errs []error
	for _, s := range pl.slots {
		if s.proc == nil {
			continue // restarting: it is handed pl.material when it is up
		}
		if err := pl.sendMaterial(s.proc, changed); err != nil {
			errs = append(errs, fmt.Errorf("worker %d: %w", s.idx, err))
		}
	}
	maps.Copy(pl.material, changed)
	if err := errors.Join(errs...); err != nil {
		pl.log.Error("changed certificate material could not be handed to every worker", "err", err)
	}
}
