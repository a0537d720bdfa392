package certs

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// FileSource is where certs reads the files a policy names: server
// certificates and keys, tenant CAs, intermediates, CRLs, backend CAs and
// client pairs, and the fleet's ticket key file. The default is the
// operating system. A proxy worker under privilege separation reads
// nothing from disk: its enforcer reads the files and hands their bytes
// over (Snapshot).
type FileSource interface {
	Stat(path string) (fs.FileInfo, error)
	ReadFile(path string) ([]byte, error)
	// ReadFileInfo returns a file's information and, for a regular file,
	// its content, both of the same file (one descriptor).
	ReadFileInfo(path string) (fs.FileInfo, []byte, error)
}

// OSFiles reads files from the operating system.
type OSFiles struct{}

func (OSFiles) Stat(path string) (fs.FileInfo, error) { return os.Stat(path) }
func (OSFiles) ReadFile(path string) ([]byte, error)  { return os.ReadFile(path) }

// ReadFileInfo opens path without blocking (a FIFO is not waited on),
// takes its information from the descriptor, and reads it if it is a
// regular file.
func (OSFiles) ReadFileInfo(path string) (fs.FileInfo, []byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return fi, nil, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, err
	}
	return fi, data, nil
}

var processFiles atomic.Pointer[FileSource]

// SetFileSource makes src the source of every Manager built without
// Config.Files and of BackendTLS, for the whole process. A worker calls it
// once, before it builds anything.
func SetFileSource(src FileSource) { processFiles.Store(&src) }

func defaultFiles() FileSource {
	if p := processFiles.Load(); p != nil {
		return *p
	}
	return OSFiles{}
}

// File is one file's content as the enforcer read it; Err says why it
// could not (the reader sees the same failure, as an *fs.PathError).
type File struct {
	Path    string    `json:"path"`
	Data    []byte    `json:"data,omitempty"`
	Mode    uint32    `json:"mode,omitempty"` // fs.FileMode
	ModTime time.Time `json:"mtime,omitzero"`
	Err     string    `json:"err,omitempty"`
	Missing bool      `json:"missing,omitempty"` // Err is fs.ErrNotExist
}

// ReadFileForSnapshot reads path from the operating system into a File;
// a failure is recorded in the File, not returned.
func ReadFileForSnapshot(path string) File {
	f := File{Path: filepath.Clean(path)}
	fi, data, err := OSFiles{}.ReadFileInfo(path)
	if err != nil {
		f.Err, f.Missing = err.Error(), os.IsNotExist(err)
		if pe, ok := err.(*fs.PathError); ok {
			f.Err = pe.Err.Error()
		}
		return f
	}
	f.Data, f.Mode, f.ModTime = data, uint32(fi.Mode()), fi.ModTime()
	return f
}

// Snapshot is a FileSource held in memory: the files the enforcer handed
// over. A path it was never given reads as "not handed over by the
// enforcer", never from disk.
type Snapshot struct {
	mu    sync.RWMutex
	files map[string]File
}

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot { return &Snapshot{files: map[string]File{}} }

// Put records files, replacing those of the same path.
func (s *Snapshot) Put(files ...File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range files {
		s.files[filepath.Clean(f.Path)] = f
	}
}

// Keep forgets every file but those of paths.
func (s *Snapshot) Keep(paths []string) {
	keep := map[string]bool{}
	for _, p := range paths {
		keep[filepath.Clean(p)] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.files {
		if !keep[p] {
			delete(s.files, p)
		}
	}
}

// Len is how many files the snapshot holds.
func (s *Snapshot) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.files)
}

// notHandedOver is what reading a path the enforcer did not send gives.
type notHandedOver struct{}

func (notHandedOver) Error() string { return "not handed over by the enforcer" }
func (notHandedOver) Is(target error) bool {
	return target == fs.ErrNotExist
}

type fileErr struct {
	msg     string
	missing bool
}

func (e fileErr) Error() string { return e.msg }
func (e fileErr) Is(target error) bool {
	return e.missing && target == fs.ErrNotExist
}

func (s *Snapshot) get(op, path string) (File, error) {
	s.mu.RLock()
	f, ok := s.files[filepath.Clean(path)]
	s.mu.RUnlock()
	if !ok {
		return File{}, &fs.PathError{Op: op, Path: path, Err: notHandedOver{}}
	}
	if f.Err != "" {
		return File{}, &fs.PathError{Op: op, Path: path, Err: fileErr{msg: f.Err, missing: f.Missing}}
	}
	return f, nil
}

func (s *Snapshot) Stat(path string) (fs.FileInfo, error) {
	f, err := s.get("stat", path)
	if err != nil {
		return nil, err
	}
	return snapInfo{f}, nil
}

func (s *Snapshot) ReadFileInfo(path string) (fs.FileInfo, []byte, error) {
	f, err := s.get("open", path)
	if err != nil {
		return nil, nil, err
	}
	return snapInfo{f}, f.Data, nil
}

func (s *Snapshot) ReadFile(path string) ([]byte, error) {
	f, err := s.get("open", path)
	if err != nil {
		return nil, err
	}
	return f.Data, nil
}

// snapInfo is a File as fs.FileInfo.
type snapInfo struct{ f File }

func (i snapInfo) Name() string       { return filepath.Base(i.f.Path) }
func (i snapInfo) Size() int64        { return int64(len(i.f.Data)) }
func (i snapInfo) Mode() fs.FileMode  { return fs.FileMode(i.f.Mode) }
func (i snapInfo) ModTime() time.Time { return i.f.ModTime }
func (i snapInfo) IsDir() bool        { return fs.FileMode(i.f.Mode).IsDir() }
func (i snapInfo) Sys() any           { return nil }
