package fsops

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"paddock/supervisor/internal/wire"
)

const (
	// MaxWatches bounds the fs.watch requests running at once.
	MaxWatches = 64
	// maxWatchDirs bounds the directories one recursive watch follows.
	maxWatchDirs = 4096
	watchMask    = syscall.IN_CREATE | syscall.IN_MODIFY | syscall.IN_DELETE | syscall.IN_MOVED_FROM |
		syscall.IN_MOVED_TO | syscall.IN_ATTRIB | syscall.IN_DELETE_SELF | syscall.IN_MOVE_SELF |
		syscall.IN_ONLYDIR | syscall.IN_DONT_FOLLOW | syscall.IN_EXCL_UNLINK
)

var watches atomic.Int32

var errTooManyDirs = fmt.Errorf("%w: more than %d directories to watch", syscall.EBUSY, maxWatchDirs)

// watcher is one fs.watch request: its own inotify instance and the directories it follows.
type watcher struct {
	out       *wire.Writer
	id        uint64
	f         *os.File // the inotify descriptor (non-blocking: reads wait in Go's poller)
	fd        int
	dirs      map[int32]string // watch descriptor -> directory path
	root      int32
	recursive bool
}

// Watch answers fs.watch: "watching" {dirs} once the directory (and with recursive, every
// directory under it) is watched, then "event" frames {kind, path, is_dir} until a cancel
// (error cancelled) or the directory goes away (ok). Kinds: create, write, remove, rename
// (the old name of a move; the new name comes as create), chmod, and overflow when the
// kernel's queue overflowed (events were lost).
func Watch(out *wire.Writer, req *wire.Request, stop wire.Stop) {
	if !needPath(out, req) {
		return
	}
	if watches.Add(1) > MaxWatches {
		watches.Add(-1)
		out.Error(req.ID, "busy", fmt.Sprintf("more than %d watches at once", MaxWatches))
		return
	}
	defer watches.Add(-1)
	info, err := os.Lstat(req.Path)
	if err != nil {
		fail(out, req.ID, err)
		return
	}
	if !info.IsDir() {
		out.Error(req.ID, "not_dir", req.Path+": not a directory")
		return
	}
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		out.Error(req.ID, "busy", "inotify: "+err.Error())
		return
	}
	w := &watcher{
		out: out, id: req.ID, f: os.NewFile(uintptr(fd), "inotify"), fd: fd,
		dirs: map[int32]string{}, recursive: req.Recursive,
	}
	defer w.f.Close()
	w.root = -1
	if err := w.add(req.Path, false); err != nil {
		w.fail(err)
		return
	}
	_ = out.Send(wire.Msg{"type": "watching", "id": req.ID, "dirs": len(w.dirs)}, nil)
	// A cancel wakes the read below through a deadline in the past (the descriptor stays
	// open until this function returns, so its number cannot be reused meanwhile).
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			_ = w.f.SetReadDeadline(time.Unix(1, 0))
		case <-done:
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if stop.Stopped() {
			fail(out, req.ID, errCancelled)
			return
		}
		if err != nil {
			fail(out, req.ID, err)
			return
		}
		ended, err := w.events(buf[:n])
		if err != nil {
			w.fail(err)
			return
		}
		if ended {
			out.OK(req.ID, nil)
			return
		}
	}
}

func (w *watcher) fail(err error) {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.EBUSY) {
		w.out.Error(w.id, "busy", err.Error())
		return
	}
	fail(w.out, w.id, err)
}

// add watches dir and, with recursive, the directories under it (symlinks not followed),
// breadth first so that no more than one directory is open at a time. announce sends a
// create event for each entry found under dir: it may have appeared before the watch.
func (w *watcher) add(dir string, announce bool) error {
	queue := []string{dir}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if len(w.dirs) >= maxWatchDirs {
			return errTooManyDirs
		}
		wd, err := syscall.InotifyAddWatch(w.fd, d, watchMask)
		if err != nil {
			if d != dir && skippable(err) {
				continue // gone or swapped for a symlink meanwhile
			}
			return &os.PathError{Op: "watch", Path: d, Err: err}
		}
		w.dirs[int32(wd)] = d
		if w.root < 0 {
			w.root = int32(wd)
		}
		if !w.recursive && !announce {
			continue
		}
		subs, err := w.scan(d, announce, maxWatchDirs-len(w.dirs)-len(queue))
		if err != nil {
			return err
		}
		queue = append(queue, subs...)
	}
	return nil
}

// scan lists dir: its subdirectories (when recursive; at most room of them) and, with
// announce, a create event for each entry.
func (w *watcher) scan(dir string, announce bool, room int) ([]string, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil // gone or swapped meanwhile: its own events say so
	}
	defer f.Close()
	var subs []string
	for {
		names, rerr := f.ReadDir(entriesBatch)
		for _, e := range names {
			p := filepath.Join(dir, e.Name())
			isDir := e.Type()&os.ModeDir != 0
			if announce {
				w.send("create", p, isDir)
			}
			if isDir && w.recursive {
				if len(subs) >= room {
					return nil, errTooManyDirs
				}
				subs = append(subs, p)
			}
		}
		if rerr != nil {
			return subs, nil // io.EOF, or the directory went away
		}
	}
}

// forget stops watching path and every directory under it (it moved away: a move inside
// the tree is reported again under its new name, with new watches).
func (w *watcher) forget(path string) {
	for wd, d := range w.dirs {
		if wd != w.root && (d == path || strings.HasPrefix(d, path+"/")) {
			_, _ = syscall.InotifyRmWatch(w.fd, uint32(wd))
			delete(w.dirs, wd)
		}
	}
}

func (w *watcher) send(kind, path string, isDir bool) {
	_ = w.out.Send(wire.Msg{"type": "event", "id": w.id, "kind": kind, "path": path, "is_dir": isDir}, nil)
}

// events sends the events in buf; true when the watched directory went away.
func (w *watcher) events(buf []byte) (bool, error) {
	// Not unsafe.Sizeof: the struct ends in a zero-size field, which Go pads.
	const size = syscall.SizeofInotifyEvent
	for len(buf) >= size {
		ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[0]))
		end := size + int(ev.Len)
		if end > len(buf) {
			return false, io.ErrUnexpectedEOF
		}
		name := string(bytes.TrimRight(buf[size:end], "\x00"))
		buf = buf[end:]
		mask, isDir := ev.Mask, ev.Mask&syscall.IN_ISDIR != 0
		if mask&syscall.IN_Q_OVERFLOW != 0 {
			w.send("overflow", "", false)
			continue
		}
		dir, ok := w.dirs[ev.Wd]
		if !ok {
			continue // a directory dropped meanwhile
		}
		if mask&(syscall.IN_DELETE_SELF|syscall.IN_MOVE_SELF|syscall.IN_IGNORED) != 0 {
			if ev.Wd == w.root {
				return true, nil
			}
			if mask&syscall.IN_IGNORED != 0 {
				delete(w.dirs, ev.Wd) // a subdirectory removed
			}
			continue // a subdirectory moved: its parent's rename event handles it
		}
		path := filepath.Join(dir, name)
		switch {
		case mask&(syscall.IN_CREATE|syscall.IN_MOVED_TO) != 0:
			w.send("create", path, isDir)
			if isDir && w.recursive {
				if err := w.add(path, true); err != nil && !skippable(err) {
					return false, err
				}
			}
		case mask&syscall.IN_MODIFY != 0:
			w.send("write", path, isDir)
		case mask&syscall.IN_DELETE != 0:
			w.send("remove", path, isDir)
		case mask&syscall.IN_MOVED_FROM != 0:
			w.send("rename", path, isDir)
			if isDir {
				w.forget(path)
			}
		case mask&syscall.IN_ATTRIB != 0:
			w.send("chmod", path, isDir)
		}
	}
	return false, nil
}
