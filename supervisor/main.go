// Command paddock-supervisor runs inside a sandbox and serves the worker over its stdin and
// stdout: processes and files, multiplexed by request id (PROTOCOL.md).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"paddock/supervisor/internal/fsops"
	"paddock/supervisor/internal/proc"
	"paddock/supervisor/internal/wire"
)

// Exit statuses: 0 the peer closed stdin (or SIGTERM), 2 the stream ended inside a frame,
// 64 bad command-line arguments.
const (
	exitTruncated = 2
	exitUsage     = 64
)

// version is the protocol version the hello answer reports.
const version = "2"

// idleRelease hands freed memory back to the OS once the supervisor goes quiet after work,
// so an idle sandbox's supervisor stays small after a large transfer.
const idleRelease = 2 * time.Second

// termGrace is how long the process groups get between SIGTERM and SIGKILL when the
// supervisor itself is stopped.
const termGrace = 2 * time.Second

var busy atomic.Bool

// streamOps stream frames off the request loop until they end or are cancelled.
var streamOps = map[string]func(*wire.Writer, *wire.Request, wire.Stop){
	"fs.list": fsops.List, "fs.read": fsops.Read, "fs.watch": fsops.Watch,
}

// fileOps each answer one request off the request loop.
var fileOps = map[string]func(*wire.Writer, *wire.Request){
	"fs.stat": fsops.Stat, "fs.mkdir": fsops.Mkdir, "fs.move": fsops.Move, "fs.remove": fsops.Remove,
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

// validNonce: 16-64 ASCII letters and digits, so the hello answer's bytes are predictable.
func validNonce(n string) bool {
	if len(n) < 16 || len(n) > 64 {
		return false
	}
	for _, c := range []byte(n) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

func seconds(name string, value float64) time.Duration {
	if value <= 0 {
		fmt.Fprintf(os.Stderr, "--%s must be positive\n", name)
		os.Exit(exitUsage)
	}
	return time.Duration(value * float64(time.Second))
}

func main() {
	ring := flag.Int("ring-bytes", proc.DefaultRing, "bytes of each process's latest output kept for proc.attach")
	initMode := flag.Bool("init", false, "reap orphans: be PID 1 or a child subreaper for the process groups")
	frameTimeout := flag.Float64("frame-timeout", 5, "seconds a frame may take to arrive once it started")
	writeIdle := flag.Float64("write-idle", 30, "seconds an fs.write may wait for its next frame")
	flag.CommandLine.Init(os.Args[0], flag.ContinueOnError)
	if err := flag.CommandLine.Parse(os.Args[1:]); err != nil || *ring < 0 || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(exitUsage)
	}
	started := time.Now()
	// A peer gone must surface as a write error, not kill the supervisor mid-frame. Notify,
	// not Ignore: an ignored signal stays ignored in the processes it spawns (exec keeps
	// SIG_IGN), and `yes | head` must end by SIGPIPE there as anywhere.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	out := wire.NewWriter(os.Stdout)
	procs := proc.NewManager(out, *ring)
	if *initMode {
		if err := procs.ReapOrphans(); err != nil {
			out.Error(0, "io", "cannot become a child subreaper: "+err.Error())
			os.Exit(exitUsage)
		}
	}
	// docker stop: the groups get SIGTERM, then SIGKILL after the grace time.
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	go func() {
		<-terms
		procs.TermAll(termGrace)
		os.Exit(0)
	}()
	writes := fsops.NewWrites(out, seconds("write-idle", *writeIdle))
	streams := wire.NewStreams()
	in := wire.NewReader(os.Stdin, seconds("frame-timeout", *frameTimeout))
	// A SYNC marker comes from a new peer: the streams of the old one stop (their processes
	// keep running), its unfinished writes are aborted.
	in.OnSync = func() {
		streams.CancelAll()
		procs.DetachAll()
		writes.AbortAll()
	}
	go releaseWhenIdle()
	for {
		header, payload, err := in.Next()
		busy.Store(true)
		var bad *wire.BadFrame
		var desync *wire.Desync
		switch {
		case err == io.EOF:
			procs.KillAll()
			os.Exit(0)
		case errors.Is(err, wire.ErrTruncated):
			out.Error(0, "framing", err.Error())
			procs.KillAll()
			os.Exit(exitTruncated)
		case errors.As(err, &desync):
			out.Error(0, "framing", desync.Reason)
			continue
		case errors.As(err, &bad):
			out.Error(bad.ID, "bad_frame", bad.Reason)
			continue
		case err != nil:
			procs.KillAll()
			os.Exit(exitTruncated)
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
		case "hello":
			hello(out, req, procs.Running(), started)
		case "cancel":
			// The target's own stream ends with error cancelled (or had ended already).
			_ = streams.Cancel(req.Target) || procs.Detach(req.Target) || writes.Cancel(req.Target)
			out.OK(req.ID, nil)
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
			writes.Chunk(req, payload)
		default:
			if op := streamOps[req.Op]; op != nil {
				stop := streams.Add(req.ID)
				go func() {
					op(out, req, stop)
					streams.Done(req.ID, stop)
				}()
			} else if op := fileOps[req.Op]; op != nil {
				go op(out, req)
			} else {
				out.Error(req.ID, "unknown_op", "unknown op "+req.Op)
			}
		}
	}
}

// hello answers with a header whose bytes are exactly {"id":N,"nonce":"…","type":"hello"},
// so a peer that starts reading mid-stream finds it by searching for those bytes.
func hello(out *wire.Writer, req *wire.Request, running int, started time.Time) {
	if !validNonce(req.Nonce) {
		out.Error(req.ID, "invalid", "nonce must be 16-64 ASCII letters and digits")
		return
	}
	header := `{"id":` + strconv.FormatUint(req.ID, 10) + `,"nonce":"` + req.Nonce + `","type":"hello"}`
	info, _ := json.Marshal(wire.Msg{
		"version": version, "pid": os.Getpid(), "processes": running,
		"uptime_s": time.Since(started).Seconds(),
	})
	_ = out.SendRaw([]byte(header), info)
}
