package proc

import (
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const prSetChildSubreaper = 36

// ReapOrphans makes the supervisor an init for its process groups: it becomes a child
// subreaper (orphans of its processes are reparented to it even when it is not PID 1) and
// reaps every child it did not spawn on each SIGCHLD. The processes it spawned are left to
// their own wait, so their exit statuses stay theirs.
func (m *Manager) ReapOrphans() error {
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
		return errno
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func() {
		for range sigs {
			m.reap()
		}
	}()
	m.reap() // any orphan that came before the handler
	return nil
}

// reap waits, without blocking, for each child that is not a spawned process. It holds
// startMu, so a process being spawned is registered before it can be looked at.
func (m *Manager) reap() {
	m.startMu.Lock()
	defer m.startMu.Unlock()
	for _, pid := range children() {
		if m.unreaped[pid] {
			continue
		}
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
			if err != syscall.EINTR {
				break
			}
		}
	}
}

// children lists the supervisor's children: from /proc/self/task/*/children when the kernel
// has it, else by the parent pid in every /proc/<pid>/stat.
func children() []int {
	var pids []int
	files, _ := filepath.Glob("/proc/self/task/*/children")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(field); err == nil && pid > 0 {
				pids = append(pids, pid)
			}
		}
	}
	if len(files) > 0 {
		return pids
	}
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		end := strings.LastIndexByte(string(data), ')')
		if end < 0 {
			continue
		}
		fields := strings.Fields(string(data[end+1:]))
		if len(fields) >= 2 && fields[1] == strconv.Itoa(self) {
			pids = append(pids, pid)
		}
	}
	return pids
}
