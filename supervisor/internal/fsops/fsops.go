// Package fsops performs the file operations: stat, list with depth, streamed read and write,
// mkdir, move, remove. Symlinks are reported, never followed, by stat and list.
package fsops

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"paddock/supervisor/internal/wire"
)

const (
	maxDepth     = 64
	maxEntries   = 100000
	entriesBatch = 256
	maxWrites    = 64
)

// Code maps an error to the protocol's error code.
func Code(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		// Before the fs.Err* checks: Go counts ENOTEMPTY as fs.ErrExist.
		switch errno {
		case syscall.ENOTDIR:
			return "not_dir"
		case syscall.EISDIR:
			return "is_dir"
		case syscall.ENOTEMPTY:
			return "not_empty"
		case syscall.EXDEV:
			return "cross_device"
		case syscall.EINVAL:
			return "invalid"
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "not_found"
	case errors.Is(err, fs.ErrExist):
		return "exists"
	case errors.Is(err, fs.ErrPermission):
		return "permission"
	case err == errCancelled:
		return "cancelled"
	}
	return "io"
}

func fail(out *wire.Writer, id uint64, err error) { out.Error(id, Code(err), err.Error()) }

// reply ends request id: ok, or the error's code.
func reply(out *wire.Writer, id uint64, err error) {
	if err != nil {
		fail(out, id, err)
		return
	}
	out.OK(id, nil)
}

// Entry is what stat and list report about one path.
type Entry struct {
	Name   string  `json:"name"`
	Path   string  `json:"path"`
	Type   string  `json:"type"`
	Size   int64   `json:"size"`
	Mode   uint32  `json:"mode"`
	Mtime  float64 `json:"mtime"`
	Target string  `json:"target,omitempty"`
}

func entry(path string, info fs.FileInfo) Entry {
	e := Entry{
		Name:  info.Name(),
		Path:  path,
		Size:  info.Size(),
		Mode:  uint32(info.Mode().Perm()),
		Mtime: float64(info.ModTime().UnixNano()) / 1e9,
	}
	switch m := info.Mode(); {
	case m.IsRegular():
		e.Type = "file"
	case m.IsDir():
		e.Type = "dir"
	case m&fs.ModeSymlink != 0:
		e.Type = "symlink"
		e.Target, _ = os.Readlink(path)
	default:
		e.Type = "other"
	}
	return e
}

func needPath(out *wire.Writer, req *wire.Request) bool {
	if req.Path == "" {
		out.Error(req.ID, "invalid", "path is missing")
		return false
	}
	return true
}

// Stat answers fs.stat.
func Stat(out *wire.Writer, req *wire.Request) {
	if !needPath(out, req) {
		return
	}
	info, err := os.Lstat(req.Path)
	if err != nil {
		fail(out, req.ID, err)
		return
	}
	out.OK(req.ID, wire.Msg{"entry": entry(req.Path, info)})
}

// errCancelled ends a stream whose request was cancelled.
var errCancelled = errors.New("cancelled")

// List answers fs.list: "entries" frames of up to 256 entries, then ok with the count.
// A cancel ends it with error cancelled.
func List(out *wire.Writer, req *wire.Request, stop wire.Stop) {
	if !needPath(out, req) {
		return
	}
	depth := req.Depth
	if depth == 0 {
		depth = 1
	}
	if depth < 1 || depth > maxDepth {
		out.Error(req.ID, "invalid", fmt.Sprintf("depth must be in [1, %d]", maxDepth))
		return
	}
	info, err := os.Lstat(req.Path)
	if err != nil {
		fail(out, req.ID, err)
		return
	}
	if !info.IsDir() {
		out.Error(req.ID, "not_dir", req.Path+": not a directory")
		return
	}
	batch := make([]Entry, 0, entriesBatch)
	count := 0
	var walk func(dir string, left int) error
	// Each directory is read a batch at a time, so a huge one costs no more than the entry
	// limit; O_NOFOLLOW: a directory swapped for a symlink meanwhile is not followed.
	walk = func(dir string, left int) error {
		f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		for {
			names, err := f.ReadDir(entriesBatch)
			for _, d := range names {
				p := filepath.Join(dir, d.Name())
				fi, err := os.Lstat(p)
				if err != nil {
					continue // gone meanwhile
				}
				if count++; count > maxEntries {
					return fmt.Errorf("%w: more than %d entries", syscall.E2BIG, maxEntries)
				}
				batch = append(batch, entry(p, fi))
				if len(batch) == entriesBatch {
					if stop.Stopped() {
						return errCancelled
					}
					_ = out.Send(wire.Msg{"type": "entries", "id": req.ID, "entries": batch}, nil)
					batch = batch[:0]
				}
				if fi.IsDir() && left > 1 {
					if err := walk(p, left-1); err != nil && !skippable(err) {
						return err
					}
				}
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	if err := walk(req.Path, depth); err != nil {
		fail(out, req.ID, err)
		return
	}
	if stop.Stopped() {
		fail(out, req.ID, errCancelled)
		return
	}
	if len(batch) > 0 {
		_ = out.Send(wire.Msg{"type": "entries", "id": req.ID, "entries": batch}, nil)
	}
	out.OK(req.ID, wire.Msg{"count": count})
}

// skippable: a subdirectory that list cannot read, or that changed since it was seen (gone,
// or swapped for a symlink or a file), is left out rather than failing the whole list.
func skippable(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, fs.ErrNotExist) ||
		errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.ENOTDIR)
}

// Read answers fs.read: "data" frames of up to MaxChunk bytes, then ok with the size.
// Only regular files: a FIFO or device could block or never end (O_NONBLOCK and O_NOCTTY so
// that opening one to find out has no effect). It reads to the end of the file, not to its
// stat size: /proc and /sys files say size 0. A cancel ends it with error cancelled.
func Read(out *wire.Writer, req *wire.Request, stop wire.Stop) {
	if !needPath(out, req) {
		return
	}
	f, err := os.OpenFile(req.Path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		fail(out, req.ID, err)
		return
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		fail(out, req.ID, err)
		return
	}
	if info.IsDir() {
		out.Error(req.ID, "is_dir", req.Path+": is a directory")
		return
	}
	if !info.Mode().IsRegular() {
		out.Error(req.ID, "invalid", req.Path+": not a regular file")
		return
	}
	buf := make([]byte, wire.MaxChunk)
	var size int64
	for {
		if stop.Stopped() {
			fail(out, req.ID, errCancelled)
			return
		}
		n, err := f.Read(buf)
		if n > 0 {
			size += int64(n)
			if serr := out.Send(wire.Msg{"type": "data", "id": req.ID}, buf[:n]); serr != nil {
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			fail(out, req.ID, err)
			return
		}
	}
	out.OK(req.ID, wire.Msg{"size": size})
}

// Writes holds the fs.write streams in progress: one temporary file each, renamed onto the
// path when the last chunk (more=false) arrives, so a reader never sees half a file. A write
// that is cancelled, or gets no frame for its idle time (its peer is gone), is aborted: its
// temporary file removed, its slot freed.
type Writes struct {
	out    *wire.Writer
	idle   time.Duration
	mu     sync.Mutex
	open   map[uint64]*pending
	failed map[uint64]time.Time // ended by an error: later frames dropped until more=false
}

type pending struct {
	f    *os.File
	path string
	size int64
	last time.Time // the last frame
}

// NewWrites makes an empty set of write streams; a write idle for longer than idle is
// aborted.
func NewWrites(out *wire.Writer, idle time.Duration) *Writes {
	w := &Writes{out: out, idle: idle, open: map[uint64]*pending{}, failed: map[uint64]time.Time{}}
	go w.expire()
	return w
}

// expire aborts the writes idle for too long and forgets old failed ones.
func (w *Writes) expire() {
	tick := w.idle / 4
	if tick < 50*time.Millisecond {
		tick = 50 * time.Millisecond
	}
	for range time.Tick(tick) {
		now := time.Now()
		w.mu.Lock()
		for id, p := range w.open {
			if now.Sub(p.last) > w.idle {
				w.drop(id, p)
				w.out.Error(id, "cancelled", fmt.Sprintf("no frame for %v: the write is aborted", w.idle))
			}
		}
		for id, at := range w.failed {
			if now.Sub(at) > w.idle {
				delete(w.failed, id)
			}
		}
		w.mu.Unlock()
	}
}

// drop removes write id and its temporary file; w.mu is held.
func (w *Writes) drop(id uint64, p *pending) {
	delete(w.open, id)
	w.failed[id] = time.Now()
	_ = p.f.Close()
	_ = os.Remove(p.f.Name())
}

// Cancel aborts write id (answering it error cancelled); false when no such write runs.
func (w *Writes) Cancel(id uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.open[id]
	if p == nil {
		return false
	}
	w.drop(id, p)
	w.out.Error(id, "cancelled", "the write was cancelled")
	return true
}

// AbortAll aborts every write silently (their peer is gone) and forgets the failed ones.
func (w *Writes) AbortAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, p := range w.open {
		w.drop(id, p)
	}
	w.failed = map[uint64]time.Time{}
}

// Chunk handles one fs.write frame. The first frame of an id names the path (and mode);
// after an error, the rest of that id's chunks are dropped silently.
func (w *Writes) Chunk(req *wire.Request, payload []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.out
	if _, ok := w.failed[req.ID]; ok {
		if !req.More {
			delete(w.failed, req.ID)
		} else {
			w.failed[req.ID] = time.Now()
		}
		return
	}
	p, ok := w.open[req.ID]
	if !ok {
		if !needPath(out, req) {
			w.markFailed(req)
			return
		}
		if len(w.open) >= maxWrites {
			out.Error(req.ID, "busy", fmt.Sprintf("more than %d writes at once", maxWrites))
			w.markFailed(req)
			return
		}
		mode := os.FileMode(0o644)
		if req.Mode != nil {
			mode = os.FileMode(*req.Mode & 0o7777)
		}
		if info, err := os.Lstat(req.Path); err == nil && info.IsDir() {
			out.Error(req.ID, "is_dir", req.Path+": is a directory")
			w.markFailed(req)
			return
		}
		f, err := os.CreateTemp(filepath.Dir(req.Path), ".paddock-write-*")
		if err != nil {
			fail(out, req.ID, err)
			w.markFailed(req)
			return
		}
		if err := f.Chmod(mode); err != nil {
			w.abort(req, &pending{f: f}, err)
			return
		}
		p = &pending{f: f, path: req.Path}
		w.open[req.ID] = p
	}
	p.last = time.Now()
	if _, err := p.f.Write(payload); err != nil {
		delete(w.open, req.ID)
		w.abort(req, p, err)
		return
	}
	p.size += int64(len(payload))
	if req.More {
		return
	}
	delete(w.open, req.ID)
	if err := p.f.Close(); err != nil {
		_ = os.Remove(p.f.Name())
		fail(out, req.ID, err)
		return
	}
	if err := os.Rename(p.f.Name(), p.path); err != nil {
		_ = os.Remove(p.f.Name())
		fail(out, req.ID, err)
		return
	}
	out.OK(req.ID, wire.Msg{"size": p.size})
}

func (w *Writes) markFailed(req *wire.Request) {
	if req.More {
		w.failed[req.ID] = time.Now()
	}
}

func (w *Writes) abort(req *wire.Request, p *pending, err error) {
	_ = p.f.Close()
	_ = os.Remove(p.f.Name())
	fail(w.out, req.ID, err)
	w.markFailed(req)
}

// Mkdir answers fs.mkdir (parents: like mkdir -p, no error when it exists).
func Mkdir(out *wire.Writer, req *wire.Request) {
	if !needPath(out, req) {
		return
	}
	mkdir := os.Mkdir
	if req.Parents {
		mkdir = os.MkdirAll
	}
	reply(out, req.ID, mkdir(req.Path, 0o755))
}

// Move answers fs.move (a rename: same filesystem only).
func Move(out *wire.Writer, req *wire.Request) {
	if !needPath(out, req) {
		return
	}
	if req.Dst == "" {
		out.Error(req.ID, "invalid", "dst is missing")
		return
	}
	reply(out, req.ID, os.Rename(req.Path, req.Dst))
}

// Remove answers fs.remove (recursive: a whole tree; otherwise a file or empty directory).
func Remove(out *wire.Writer, req *wire.Request) {
	if !needPath(out, req) {
		return
	}
	if _, err := os.Lstat(req.Path); err != nil {
		fail(out, req.ID, err)
		return
	}
	remove := os.Remove
	if req.Recursive {
		remove = os.RemoveAll
	}
	reply(out, req.ID, remove(req.Path))
}
