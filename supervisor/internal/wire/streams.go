package wire

import "sync"

// Stop is closed when a stream's request is cancelled.
type Stop <-chan struct{}

// Stopped says whether the stream was cancelled.
func (s Stop) Stopped() bool {
	select {
	case <-s:
		return true
	default:
		return false
	}
}

// Streams holds the requests that stream frames off the request loop (fs.read, fs.list,
// fs.watch) so that a cancel, or a new peer, can stop them.
type Streams struct {
	mu sync.Mutex
	m  map[uint64]chan struct{}
}

// NewStreams makes an empty set.
func NewStreams() *Streams { return &Streams{m: map[uint64]chan struct{}{}} }

// Add registers request id; call Done when it ends. A request reusing the id of one still
// running (the peer broke the rules) cancels the old one.
func (s *Streams) Add(id uint64) Stop {
	c := make(chan struct{})
	s.mu.Lock()
	if old := s.m[id]; old != nil {
		close(old)
	}
	s.m[id] = c
	s.mu.Unlock()
	return c
}

// Done forgets request id once it has ended (stop is the one Add gave).
func (s *Streams) Done(id uint64, stop Stop) {
	s.mu.Lock()
	if c := s.m[id]; c != nil && Stop(c) == stop {
		delete(s.m, id)
	}
	s.mu.Unlock()
}

// Cancel stops request id; false when no such stream runs.
func (s *Streams) Cancel(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.m[id]
	if c == nil {
		return false
	}
	close(c)
	delete(s.m, id)
	return true
}

// CancelAll stops every stream.
func (s *Streams) CancelAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, c := range s.m {
		close(c)
		delete(s.m, id)
	}
}
