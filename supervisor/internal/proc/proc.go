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
)

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

	mu       sync.Mutex
	seq      uint64
	timedOut bool
}

// Manager owns the running processes.
type Manager struct {
	out   *wire.Writer
	mu    sync.Mutex
	procs map[int]*Proc
}

// NewManager makes a manager that reports on out.
func NewManager(out *wire.Writer) *Manager { return &Manager{out: out, procs: map[int]*Proc{}} }

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
	n := len(m.procs)
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
	var inR, inW *os.File
	if req.Stdin {
		if inR, inW, err = os.Pipe(); err != nil {
			closeAll(outR, outW, errR, errW)
			m.out.Error(req.ID, "io", err.Error())
			return
		}
		cmd.Stdin = inR
	}
	if err := cmd.Start(); err != nil {
		closeAll(outR, outW, errR, errW, inR, inW)
		code := "io"
		var perr *os.PathError
		if errors.As(err, &perr) && errors.Is(perr.Err, os.ErrNotExist) {
			code = "not_found"
		}
		m.out.Error(req.ID, code, err.Error())
		return
	}
	closeAll(outW, errW, inR)
	p := &Proc{id: req.ID, pid: cmd.Process.Pid, argv: argv, started: time.Now()}
	if inW != nil {
		p.stdin = make(chan stdinWrite, stdinQueue)
		go m.feed(p, inW)
	}
	m.mu.Lock()
	m.procs[p.pid] = p
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
	readers.Add(2)
	go m.pump(p, outR, "stdout", &readers)
	go m.pump(p, errR, "stderr", &readers)
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
			seq := p.seq
			// Sent under the lock so that frames leave in seq order.
			_ = m.out.Send(wire.Msg{"type": "output", "id": p.id, "pid": p.pid, "stream": stream, "seq": seq}, buf[:n])
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
	readers.Wait()
	if timer != nil {
		timer.Stop()
	}
	ended := time.Now()
	m.mu.Lock()
	delete(m.procs, p.pid)
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
	p.mu.Unlock()
	_ = m.out.Send(msg, nil)
}

// feed writes stdin in order, off the request loop (a process that does not read its stdin
// blocks only its own writes), and answers each write once it is done.
func (m *Manager) feed(p *Proc, w *os.File) {
	defer w.Close()
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
		if sw.eof {
			_ = w.Close()
			closed = true
		}
		m.out.OK(sw.id, nil)
	}
}

func (m *Manager) get(req *wire.Request) *Proc {
	m.mu.Lock()
	p := m.procs[req.PID]
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
	if p == nil {
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

// List answers proc.list.
func (m *Manager) List(req *wire.Request) {
	m.mu.Lock()
	procs := make([]wire.Msg, 0, len(m.procs))
	for _, p := range m.procs {
		procs = append(procs, wire.Msg{
			"id": p.id, "pid": p.pid, "pgid": p.pid, "argv": p.argv,
			"started_at": float64(p.started.UnixNano()) / 1e9, "stdin": p.stdin != nil,
		})
	}
	m.mu.Unlock()
	m.out.OK(req.ID, wire.Msg{"processes": procs})
}

// KillAll SIGKILLs every process group (the supervisor's peer is gone).
func (m *Manager) KillAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for pid := range m.procs {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}
