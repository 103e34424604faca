// Command paddock-supervisor runs inside a sandbox and serves the worker over its stdin and
// stdout: processes and files, multiplexed by request id (PROTOCOL.md).
package main

import (
	"bufio"
	"errors"
	"flag"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"paddock/supervisor/internal/fsops"
	"paddock/supervisor/internal/proc"
	"paddock/supervisor/internal/wire"
)

// Exit statuses: 0 the peer closed stdin, 2 framing was lost (the peer sent a frame length
// out of bounds or the stream ended inside a frame), 64 bad command-line arguments.
const (
	exitFraming = 2
	exitUsage   = 64
)

// idleRelease hands freed memory back to the OS once the supervisor goes quiet after work,
// so an idle sandbox's supervisor stays small after a large transfer.
const idleRelease = 2 * time.Second

var busy atomic.Bool

// fileOps are the file operations that each answer one request off the request loop.
var fileOps = map[string]func(*wire.Writer, *wire.Request){
	"fs.stat": fsops.Stat, "fs.list": fsops.List, "fs.read": fsops.Read,
	"fs.mkdir": fsops.Mkdir, "fs.move": fsops.Move, "fs.remove": fsops.Remove,
}

func releaseWhenIdle() {
	wasBusy := false
	for range time.Tick(idleRelease) {
		now := busy.Swap(false)
		if wasBusy && !now {
			debug.FreeOSMemory()
		}
		wasBusy = now
	}
}

func main() {
	ring := flag.Int("ring-bytes", proc.DefaultRing, "bytes of each process's latest output kept for proc.attach")
	initMode := flag.Bool("init", false, "reap orphans: be PID 1 or a child subreaper for the process groups")
	flag.CommandLine.Init(os.Args[0], flag.ContinueOnError)
	if err := flag.CommandLine.Parse(os.Args[1:]); err != nil || *ring < 0 || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(exitUsage)
	}
	// A peer gone must surface as a write error, not kill the supervisor mid-frame.
	signal.Ignore(syscall.SIGPIPE)
	out := wire.NewWriter(os.Stdout)
	procs := proc.NewManager(out, *ring)
	if *initMode {
		if err := procs.ReapOrphans(); err != nil {
			out.Error(0, "io", "cannot become a child subreaper: "+err.Error())
			os.Exit(exitUsage)
		}
	}
	writes := fsops.NewWrites()
	in := bufio.NewReaderSize(os.Stdin, 64<<10)
	go releaseWhenIdle()
	for {
		header, payload, err := wire.ReadFrame(in)
		busy.Store(true)
		var bad *wire.BadFrame
		switch {
		case err == io.EOF:
			procs.KillAll()
			os.Exit(0)
		case errors.Is(err, wire.ErrFraming):
			out.Error(0, "framing", err.Error())
			procs.KillAll()
			os.Exit(exitFraming)
		case errors.As(err, &bad):
			out.Error(bad.ID, "bad_frame", bad.Reason)
			continue
		case err != nil:
			procs.KillAll()
			os.Exit(exitFraming)
		}
		req, err := wire.DecodeRequest(header)
		if errors.As(err, &bad) {
			out.Error(bad.ID, "bad_frame", bad.Reason)
			continue
		}
		if len(payload) > 0 && req.Op != "fs.write" && req.Op != "proc.stdin" {
			out.Error(req.ID, "bad_frame", "op "+req.Op+" takes no payload")
			continue
		}
		switch req.Op {
		case "proc.spawn":
			procs.Spawn(req)
		case "proc.stdin":
			procs.Stdin(req, payload)
		case "proc.signal":
			procs.Signal(req)
		case "proc.list":
			procs.List(req)
		case "proc.resize":
			procs.Resize(req)
		case "proc.attach":
			procs.Attach(req)
		case "fs.write":
			// In the request loop: a write stream's chunks must stay in order.
			writes.Chunk(out, req, payload)
		default:
			if op := fileOps[req.Op]; op != nil {
				go op(out, req)
			} else {
				out.Error(req.ID, "unknown_op", "unknown op "+req.Op)
			}
		}
	}
}
