package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// SyncLen is the length prefix of the SYNC marker: no real frame has it (frames are at most
// MaxFrame long), so a peer can always tell the supervisor "a new frame starts here".
const SyncLen = 0xFFFFFFFF

// SyncMarker is the 16 bytes a peer sends to resynchronise the stream.
var SyncMarker = []byte("\xff\xff\xff\xffPADDOCK-SYNC")

// ErrTruncated: the stream ended inside a frame.
var ErrTruncated = errors.New("the stream ended inside a frame")

// Desync reports that the reader lost the frame boundaries (a length prefix out of range, or
// a frame that did not complete in time) and now skips bytes until a SYNC marker: the
// stream carries on, nothing is ended.
type Desync struct{ Reason string }

func (e *Desync) Error() string { return e.Reason }

var errStalled = errors.New("stalled")

const readChunk = 64 << 10

// Reader splits the peer's stream into frames. It never gives up on the stream: after
// framing trouble it reports a *Desync once and skips bytes until the peer's SYNC marker.
//
// A goroutine reads the stream into two 64 KiB buffers taken in turn, so a frame that
// started arriving can be timed out (a dead peer's half frame) while its read blocks.
type Reader struct {
	chunks  chan []byte // bytes read; closed at the end of the stream
	free    chan []byte // buffers handed back to the read goroutine
	cur     []byte      // unconsumed bytes, in curBuf or in a pushed-back window
	curBuf  []byte      // the buffer to hand back once cur is used up
	syncing bool        // skipping bytes until a SYNC marker
	window  []byte      // sync mode: the bytes still to scan
	// FrameTimeout bounds how long a frame may take to arrive once its first byte did.
	FrameTimeout time.Duration
	// OnSync is called (on the reading goroutine) each time a SYNC marker is taken: a new
	// peer speaks from here on.
	OnSync func()
}

// NewReader starts reading r.
func NewReader(r io.Reader, frameTimeout time.Duration) *Reader {
	rd := &Reader{chunks: make(chan []byte), free: make(chan []byte, 2), FrameTimeout: frameTimeout}
	rd.free <- make([]byte, readChunk)
	rd.free <- make([]byte, readChunk)
	go func() {
		defer close(rd.chunks)
		for buf := range rd.free {
			n, err := r.Read(buf[:readChunk])
			if n > 0 {
				rd.chunks <- buf[:n]
			} else {
				rd.free <- buf
			}
			if err != nil {
				return
			}
		}
	}()
	return rd
}

// more makes r.cur non-empty. io.EOF at the end of the stream; errStalled when timeout
// (nil: none) fires first.
func (r *Reader) more(timeout <-chan time.Time) error {
	if len(r.cur) > 0 {
		return nil
	}
	if r.curBuf != nil {
		r.free <- r.curBuf[:cap(r.curBuf)]
		r.curBuf = nil
	}
	select {
	case buf, ok := <-r.chunks:
		if !ok {
			return io.EOF
		}
		r.cur, r.curBuf = buf, buf
		return nil
	case <-timeout:
		return errStalled
	}
}

// fill copies the next len(dst) bytes into dst.
func (r *Reader) fill(dst []byte, timeout <-chan time.Time) error {
	for len(dst) > 0 {
		if err := r.more(timeout); err != nil {
			return err
		}
		n := copy(dst, r.cur)
		r.cur, dst = r.cur[n:], dst[n:]
	}
	return nil
}

// startSync enters sync mode; rescan holds bytes already taken that may start the marker.
func (r *Reader) startSync(rescan []byte, reason string) error {
	r.syncing = true
	r.window = append(r.window[:0], rescan...)
	return &Desync{Reason: reason + "; skipping to the next SYNC marker"}
}

// skipToSync consumes bytes until a whole SYNC marker has been seen, keeping only the last
// len(SyncMarker)-1 bytes scanned plus one read chunk. io.EOF if the stream ends first.
func (r *Reader) skipToSync() error {
	keep := len(SyncMarker) - 1
	for {
		if i := bytes.Index(r.window, SyncMarker); i >= 0 {
			// The bytes after the marker are the next frame's: read them before the rest.
			rest := append([]byte(nil), r.window[i+len(SyncMarker):]...)
			r.cur = append(rest, r.cur...)
			r.window, r.syncing = nil, false
			if r.OnSync != nil {
				r.OnSync()
			}
			return nil
		}
		if len(r.window) > keep {
			r.window = append(r.window[:0], r.window[len(r.window)-keep:]...)
		}
		if err := r.more(nil); err != nil {
			return err
		}
		r.window = append(r.window, r.cur...)
		r.cur = r.cur[:0]
	}
}

// Next reads the next frame. Errors: io.EOF when the stream ends between frames or while
// skipping; ErrTruncated when it ends inside a frame; *Desync when the boundaries were lost
// (report it; the next call skips to a SYNC marker); *BadFrame for a frame in bounds whose
// header length is not.
func (r *Reader) Next() (header, payload []byte, err error) {
	for {
		if r.syncing {
			if err := r.skipToSync(); err != nil {
				return nil, nil, err
			}
		}
		if err := r.more(nil); err != nil {
			return nil, nil, err // nothing of a frame yet: a clean end
		}
		timer := time.NewTimer(r.FrameTimeout)
		header, payload, err = r.frame(timer.C)
		timer.Stop()
		if err == nil && header == nil {
			continue // a SYNC marker in step: taken
		}
		return header, payload, err
	}
}

// frame reads one frame whose first byte is in r.cur; (nil, nil, nil) for a SYNC marker.
func (r *Reader) frame(timeout <-chan time.Time) (header, payload []byte, err error) {
	broken := func(err error) error {
		if err == errStalled {
			return r.startSync(nil, fmt.Sprintf("a frame did not complete within %v: discarded", r.FrameTimeout))
		}
		return ErrTruncated
	}
	var prefix [4]byte
	if err := r.fill(prefix[:], timeout); err != nil {
		return nil, nil, broken(err)
	}
	n := binary.BigEndian.Uint32(prefix[:])
	if n == SyncLen {
		var tail [12]byte
		if err := r.fill(tail[:], timeout); err != nil {
			return nil, nil, broken(err)
		}
		if bytes.Equal(tail[:], SyncMarker[4:]) {
			if r.OnSync != nil {
				r.OnSync()
			}
			return nil, nil, nil
		}
		return nil, nil, r.startSync(append(prefix[1:], tail[:]...), "a length prefix 0xFFFFFFFF without the SYNC marker")
	}
	if n < 4 || n > MaxFrame {
		return nil, nil, r.startSync(prefix[1:], fmt.Sprintf("frame length %d outside [4, %d]", n, MaxFrame))
	}
	body := make([]byte, n)
	if err := r.fill(body, timeout); err != nil {
		return nil, nil, broken(err)
	}
	h := binary.BigEndian.Uint32(body[:4])
	if h == 0 || uint64(h) > uint64(n-4) {
		return nil, nil, &BadFrame{Reason: fmt.Sprintf("header length %d outside [1, %d]", h, n-4)}
	}
	return body[4 : 4+h], body[4+h:], nil
}
