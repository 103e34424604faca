// Package proc runs processes, each the leader of its own process group, and streams their
// output and exit over the wire.
package proc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"paddock/supervisor/internal/wire"
)

const (
	maxProcs   = 1024
	stdinQueue = 64
	readBuf    = 64 << 10
	// maxExited bounds the exited processes kept for proc.attach and proc.list, and their
	// rings may hold at most exitedRings times the ring size together; the oldest exited
	// process is forgotten beyond either.
	maxExited   = 64
	exitedRings = 4
	// DefaultRing is the default size of each process's replay ring.
	DefaultRing = 4 << 20
	// minChunkCost is what a frame counts for in the ring at least: about its bookkeeping,
	// so a process writing a byte at a time cannot make the ring many times its size.
	minChunkCost = 64
)

// chunk is one output frame kept in a process's replay ring.
type chunk struct {
	stream string
	seq    uint64
	data   []byte
}

func ringCost(c chunk) int {
	if len(c.data) < minChunkCost {
		return minChunkCost
	}
	return len(c.data)
}

type stdinWrite struct {
	id   uint64
	data []byte
	eof  bool
}

// Proc is one running process.
type Proc struct {
	id      uint64 // the spawn request's id: every output and exit frame carries it
	pid     int
	argv    []string
	started time.Time
	stdin   chan stdinWrite // nil when the process got /dev/null
	pty     *os.File        // the pty master, or nil

	exited  bool // under Manager.mu: reaped, reported, kept only for attach and list
	endedAt time.Time

	// mu orders every output and exit frame of this process: they are recorded and sent
	// under it, so a replay and the live frames that follow it never overlap or miss.
	mu        sync.Mutex
	seq       uint64
	timedOut  bool
	ring      []chunk
	ringBytes int
	subs      []uint64 // attach request ids that get the live frames too
	detached  bool     // the spawn request was cancelled: its id gets no more frames
	exit      wire.Msg // the exit frame once sent (its id is rewritten per receiver)
}

// Manager owns the running processes and the recently exited ones.
type Manager struct {
	out      *wire.Writer
	ringSize int
	mu       sync.Mutex
	procs    map[int]*Proc // by pid: running and exited
	running  int
	// startMu is held from fork until the new process is in unreaped, and by the orphan
	// reaper while it reaps, so the reaper never takes a spawned process's exit status.
	startMu  sync.Mutex
	unreaped map[int]bool
}

// NewManager makes a manager that reports on out and keeps ringSize bytes of each
// process's latest output for proc.attach.
func NewManager(out *wire.Writer, ringSize int) *Manager {
	return &Manager{out: out, ringSize: ringSize, procs: map[int]*Proc{}, unreaped: map[int]bool{}}
}

func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := os.Getenv("PATH")
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			path = kv[5:]
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if info, err := os.Stat(p); err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

// Spawn answers proc.spawn: "started", then "output" frames, then "exit".
func (m *Manager) Spawn(req *wire.Request) {
	var argv []string
	switch {
	case req.Cmd != nil && req.Argv != nil:
		m.out.Error(req.ID, "invalid", "give argv or cmd, not both")
		return
	case req.Cmd != nil:
		argv = []string{"/bin/sh", "-c", *req.Cmd}
	case len(req.Argv) > 0:
		argv = req.Argv
	default:
		m.out.Error(req.ID, "invalid", "argv or cmd is required")
		return
	}
	if req.Timeout < 0 {
		m.out.Error(req.ID, "invalid", "timeout must not be negative")
		return
	}
	m.mu.Lock()
	n := m.running
	m.mu.Unlock()
	if n >= maxProcs {
		m.out.Error(req.ID, "busy", fmt.Sprintf("more than %d processes", maxProcs))
		return
	}
	env := os.Environ()
	for k, v := range req.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
			m.out.Error(req.ID, "invalid", "bad environment variable "+strconv.Quote(k))
			return
		}
		env = append(env, k+"="+v)
	}
	path, err := lookPath(argv[0], env)
	if err != nil {
		m.out.Error(req.ID, "not_found", err.Error())
		return
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Env: env, Dir: req.Cwd}
	var (
		streams    = map[string]*os.File{} // output stream name -> the read end
		afterStart []*os.File              // the child's ends, closed once it has them
		inW        *os.File
		pty        *os.File
	)
	if req.Pty != nil {
		if req.Pty.Cols == 0 || req.Pty.Rows == 0 {
			m.out.Error(req.ID, "invalid", "pty cols and rows must be positive")
			return
		}
		master, slave, err := openPTY(req.Pty.Cols, req.Pty.Rows)
		if err != nil {
			m.out.Error(req.ID, "io", err.Error())
			return
		}
		// A new session whose controlling terminal is the pty; it leads its process group.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		streams["pty"], afterStart, pty = master, []*os.File{slave}, master
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		outR, outW, err := os.Pipe()
		if err != nil {
			m.out.Error(req.ID, "io", err.Error())
			return
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			closeAll(outR, outW)
			m.out.Error(req.ID, "io", err.Error())
			return
		}
		cmd.Stdout, cmd.Stderr = outW, errW
		streams["stdout"], streams["stderr"] = outR, errR
		afterStart = []*os.File{outW, errW}
		if req.Stdin {
			inR, w, err := os.Pipe()
			if err != nil {
				closeAll(outR, outW, errR, errW)
				m.out.Error(req.ID, "io", err.Error())
				return
			}
			cmd.Stdin, inW = inR, w
			afterStart = append(afterStart, inR)
		}
	}
	m.startMu.Lock()
	err = cmd.Start()
	if err == nil {
		m.unreaped[cmd.Process.Pid] = true
	}
	m.startMu.Unlock()
	if err != nil {
		closeAll(afterStart...)
		closeAll(inW)
		for _, r := range streams {
			closeAll(r)
		}
		code := "io"
		var perr *os.PathError
		if errors.As(err, &perr) && errors.Is(perr.Err, os.ErrNotExist) {
			code = "not_found"
		}
		m.out.Error(req.ID, code, err.Error())
		return
	}
	closeAll(afterStart...)
	p := &Proc{id: req.ID, pid: cmd.Process.Pid, argv: argv, started: time.Now(), pty: pty}
	if inW != nil || pty != nil {
		p.stdin = make(chan stdinWrite, stdinQueue)
		if pty != nil {
			go m.feed(p, pty, true)
		} else {
			go m.feed(p, inW, false)
		}
	}
	m.mu.Lock()
	m.procs[p.pid] = p // replaces an exited process whose pid was reused
	m.running++
	m.mu.Unlock()
	_ = m.out.Send(wire.Msg{"type": "started", "id": p.id, "pid": p.pid, "pgid": p.pid}, nil)

	var timer *time.Timer
	if req.Timeout > 0 {
		timer = time.AfterFunc(time.Duration(req.Timeout*float64(time.Second)), func() {
			p.mu.Lock()
			p.timedOut = true
			p.mu.Unlock()
			_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		})
	}
	var readers sync.WaitGroup
	readers.Add(len(streams))
	for name, r := range streams {
		go m.pump(p, r, name, &readers)
	}
	go m.wait(p, cmd, timer, &readers)
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		if f != nil {
			_ = f.Close()
		}
	}
}

func (m *Manager) pump(p *Proc, r *os.File, stream string, done *sync.WaitGroup) {
	defer done.Done()
	defer r.Close()
	buf := make([]byte, readBuf)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.mu.Lock()
			p.seq++
			c := chunk{stream: stream, seq: p.seq, data: buf[:n]}
			if m.ringSize > 0 {
				c.data = append([]byte(nil), buf[:n]...)
				p.ring = append(p.ring, c)
				p.ringBytes += ringCost(c)
				for p.ringBytes > m.ringSize && len(p.ring) > 0 {
					p.ringBytes -= ringCost(p.ring[0])
					p.ring[0] = chunk{}
					p.ring = p.ring[1:]
				}
			}
			// Sent under the lock so that frames leave in seq order.
			if !p.detached {
				m.sendOutput(p, p.id, c)
			}
			for _, sub := range p.subs {
				m.sendOutput(p, sub, c)
			}
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// wait reports the exit once the leader is reaped and both output pipes are closed (every
// process holding them is gone), so the exit frame is always the last frame of a process.
func (m *Manager) wait(p *Proc, cmd *exec.Cmd, timer *time.Timer, readers *sync.WaitGroup) {
	_ = cmd.Wait()
	m.startMu.Lock()
	delete(m.unreaped, p.pid)
	m.startMu.Unlock()
	readers.Wait()
	if timer != nil {
		timer.Stop()
	}
	ended := time.Now()
	m.mu.Lock()
	p.exited, p.endedAt = true, ended
	m.running--
	m.forgetOldExited()
	m.mu.Unlock()
	if p.stdin != nil {
		close(p.stdin)
	}
	msg := wire.Msg{
		"type":        "exit",
		"id":          p.id,
		"pid":         p.pid,
		"code":        nil,
		"signal":      nil,
		"started_at":  float64(p.started.UnixNano()) / 1e9,
		"ended_at":    float64(ended.UnixNano()) / 1e9,
		"duration_ms": float64(ended.Sub(p.started).Microseconds()) / 1000,
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		msg["signal"] = signalName(ws.Signal())
	} else {
		msg["code"] = cmd.ProcessState.ExitCode()
	}
	p.mu.Lock()
	msg["timed_out"] = p.timedOut
	p.exit = msg
	if !p.detached {
		m.sendExit(p, p.id)
	}
	for _, sub := range p.subs {
		m.sendExit(p, sub)
	}
	p.subs = nil
	p.mu.Unlock()
}

func (m *Manager) sendOutput(p *Proc, id uint64, c chunk) {
	_ = m.out.Send(wire.Msg{"type": "output", "id": id, "pid": p.pid, "stream": c.stream, "seq": c.seq}, c.data)
}

// sendExit sends the exit frame to request id; p.mu is held.
func (m *Manager) sendExit(p *Proc, id uint64) {
	msg := make(wire.Msg, len(p.exit))
	for k, v := range p.exit {
		msg[k] = v
	}
	msg["id"] = id
	_ = m.out.Send(msg, nil)
}

// forgetOldExited drops the oldest exited processes beyond maxExited; m.mu is held.
// An exited process's ring no longer changes (its pumps are done), so ringBytes is read
// without p.mu.
func (m *Manager) forgetOldExited() {
	for {
		var oldest *Proc
		count, bytes := 0, 0
		for _, p := range m.procs {
			if p.exited {
				count++
				bytes += p.ringBytes
				if oldest == nil || p.endedAt.Before(oldest.endedAt) {
					oldest = p
				}
			}
		}
		if oldest == nil || (count <= maxExited && bytes <= exitedRings*m.ringSize) {
			return
		}
		delete(m.procs, oldest.pid)
	}
}

// Attach answers proc.attach: "attached" {pid, pgid, truncated, first_seq}, then the output
// frames still in the ring with seq > after_seq, then the live ones and the exit, all with
// the attach request's id.
func (m *Manager) Attach(req *wire.Request) {
	m.mu.Lock()
	p := m.procs[req.PID]
	m.mu.Unlock()
	if p == nil {
		m.out.Error(req.ID, "no_such_process", fmt.Sprintf("no process %d", req.PID))
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if req.AfterSeq > p.seq {
		m.out.Error(req.ID, "invalid", fmt.Sprintf("after_seq %d is beyond the last seq %d", req.AfterSeq, p.seq))
		return
	}
	if req.ID == p.id {
		m.out.Error(req.ID, "invalid", "the attach request id is the spawn request's id")
		return
	}
	first := p.seq + 1
	if len(p.ring) > 0 {
		first = p.ring[0].seq
	}
	_ = m.out.Send(wire.Msg{
		"type": "attached", "id": req.ID, "pid": p.pid, "pgid": p.pid,
		"truncated": req.AfterSeq+1 < first, "first_seq": first, "last_seq": p.seq,
	}, nil)
	for _, c := range p.ring {
		if c.seq > req.AfterSeq {
			m.sendOutput(p, req.ID, c)
		}
	}
	if p.exit != nil {
		m.sendExit(p, req.ID)
		return
	}
	p.subs = append(p.subs, req.ID)
}

// feed writes stdin in order, off the request loop (a process that does not read its stdin
// blocks only its own writes), and answers each write once it is done.
//
// On a pty, w is the master: the output pump closes it, and eof sends the terminal's EOF
// character (^D) instead of closing.
func (m *Manager) feed(p *Proc, w *os.File, pty bool) {
	if !pty {
		defer w.Close()
	}
	closed := false
	for sw := range p.stdin {
		if closed {
			m.out.Error(sw.id, "closed", "stdin is closed")
			continue
		}
		if len(sw.data) > 0 {
			if _, err := w.Write(sw.data); err != nil {
				m.out.Error(sw.id, "closed", "stdin: "+err.Error())
				continue
			}
		}
		if sw.eof && pty {
			if _, err := w.Write([]byte{4}); err != nil {
				m.out.Error(sw.id, "closed", "stdin: "+err.Error())
				continue
			}
		} else if sw.eof {
			_ = w.Close()
			closed = true
		}
		m.out.OK(sw.id, nil)
	}
}

func (m *Manager) get(req *wire.Request) *Proc {
	m.mu.Lock()
	p := m.procs[req.PID]
	if p != nil && p.exited {
		p = nil
	}
	m.mu.Unlock()
	if p == nil {
		m.out.Error(req.ID, "no_such_process", fmt.Sprintf("no running process %d", req.PID))
	}
	return p
}

// Stdin answers proc.stdin: the payload is written, then stdin closed if eof.
func (m *Manager) Stdin(req *wire.Request, payload []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.procs[req.PID]
	if p == nil || p.exited {
		m.out.Error(req.ID, "no_such_process", fmt.Sprintf("no running process %d", req.PID))
		return
	}
	if p.stdin == nil {
		m.out.Error(req.ID, "closed", "the process was started without stdin")
		return
	}
	data := append([]byte(nil), payload...)
	// Under m.mu: wait() removes the process before closing the channel, so this send
	// never meets a closed channel.
	select {
	case p.stdin <- stdinWrite{id: req.ID, data: data, eof: req.EOF}:
	default:
		m.out.Error(req.ID, "busy", "too many stdin writes pending")
	}
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2, "STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT,
	"ALRM": syscall.SIGALRM, "PIPE": syscall.SIGPIPE, "WINCH": syscall.SIGWINCH,
}

func signalName(s syscall.Signal) string {
	for name, v := range signals {
		if v == s {
			return "SIG" + name
		}
	}
	return strconv.Itoa(int(s))
}

// Resize answers proc.resize: the process's pty gets the new size.
func (m *Manager) Resize(req *wire.Request) {
	if req.Cols == 0 || req.Rows == 0 {
		m.out.Error(req.ID, "invalid", "cols and rows must be positive")
		return
	}
	p := m.get(req)
	if p == nil {
		return
	}
	if p.pty == nil {
		m.out.Error(req.ID, "invalid", "the process has no pty")
		return
	}
	if err := resize(p.pty, req.Cols, req.Rows); err != nil {
		m.out.Error(req.ID, "no_such_process", "resize: "+err.Error())
		return
	}
	m.out.OK(req.ID, nil)
}

// Signal answers proc.signal: the signal goes to the whole process group.
func (m *Manager) Signal(req *wire.Request) {
	name := strings.TrimPrefix(strings.ToUpper(req.Signal), "SIG")
	sig, ok := signals[name]
	if !ok {
		n, err := strconv.Atoi(req.Signal)
		if err != nil || n < 1 || n > 64 {
			m.out.Error(req.ID, "invalid", "unknown signal "+strconv.Quote(req.Signal))
			return
		}
		sig = syscall.Signal(n)
	}
	p := m.get(req)
	if p == nil {
		return
	}
	if err := syscall.Kill(-p.pid, sig); err != nil {
		m.out.Error(req.ID, "no_such_process", err.Error())
		return
	}
	m.out.OK(req.ID, nil)
}

// List answers proc.list: the running processes and the recently exited ones.
func (m *Manager) List(req *wire.Request) {
	m.mu.Lock()
	all := make([]*Proc, 0, len(m.procs))
	exited := make([]bool, 0, len(m.procs))
	for _, p := range m.procs {
		all = append(all, p)
		exited = append(exited, p.exited)
	}
	m.mu.Unlock()
	procs := make([]wire.Msg, 0, len(all))
	for i, p := range all {
		p.mu.Lock()
		last := p.seq
		p.mu.Unlock()
		procs = append(procs, wire.Msg{
			"id": p.id, "pid": p.pid, "pgid": p.pid, "argv": p.argv,
			"started_at": float64(p.started.UnixNano()) / 1e9, "stdin": p.stdin != nil && !exited[i],
			"exited": exited[i], "last_seq": last,
		})
	}
	m.out.OK(req.ID, wire.Msg{"processes": procs})
}

// KillAll SIGKILLs every process group (the supervisor's peer is gone).
func (m *Manager) KillAll() { m.signalAll(syscall.SIGKILL) }

func (m *Manager) signalAll(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for pid, p := range m.procs {
		if !p.exited {
			_ = syscall.Kill(-pid, sig)
		}
	}
}

// Running is the number of processes not yet exited.
func (m *Manager) Running() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.running
}

// TermAll SIGTERMs every process group, waits up to grace for them to exit, then SIGKILLs
// the rest (the supervisor is being stopped).
func (m *Manager) TermAll(grace time.Duration) {
	m.signalAll(syscall.SIGTERM)
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); {
		if m.Running() == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.KillAll()
}

func (m *Manager) all() []*Proc {
	m.mu.Lock()
	defer m.mu.Unlock()
	all := make([]*Proc, 0, len(m.procs))
	for _, p := range m.procs {
		all = append(all, p)
	}
	return all
}

// Detach stops the frames of request id, a proc.spawn or proc.attach still following its
// process (the process keeps running; proc.attach follows it again), and ends it with error
// cancelled. False when no such request follows a process.
func (m *Manager) Detach(id uint64) bool {
	for _, p := range m.all() {
		p.mu.Lock()
		found := p.id == id && !p.detached && p.exit == nil
		if found {
			p.detached = true
		}
		for i, sub := range p.subs {
			if sub == id {
				p.subs = append(p.subs[:i:i], p.subs[i+1:]...)
				found = true
				break
			}
		}
		if found {
			m.out.Error(id, "cancelled", fmt.Sprintf("stopped following process %d", p.pid))
		}
		p.mu.Unlock()
		if found {
			return true
		}
	}
	return false
}

// DetachAll stops every request following a process, silently: their peer is gone. The
// processes keep running and recording their output for proc.attach.
func (m *Manager) DetachAll() {
	for _, p := range m.all() {
		p.mu.Lock()
		p.detached, p.subs = true, nil
		p.mu.Unlock()
	}
}
