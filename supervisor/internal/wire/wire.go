// Package wire is the supervisor's framing: length-prefixed frames of a JSON header and a
// binary payload (PROTOCOL.md). Everything read is bounded and validated before use.
package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"sync"
)

const (
	// MaxFrame bounds a frame's body (header length field + header + payload).
	MaxFrame = 1 << 20
	// MaxChunk bounds the payload of one output, data or write frame.
	MaxChunk = 256 << 10
)

// BadFrame is a frame whose bounds were fine but whose content was not: the stream is still
// in sync, so the frame is refused and the next one read.
type BadFrame struct {
	ID     uint64
	Reason string
}

func (e *BadFrame) Error() string { return e.Reason }

// Request is every field any operation may carry; DecodeRequest refuses unknown ones.
type Request struct {
	ID        uint64            `json:"id"`
	Op        string            `json:"op"`
	Argv      []string          `json:"argv"`
	Cmd       *string           `json:"cmd"`
	Env       map[string]string `json:"env"`
	Cwd       string            `json:"cwd"`
	Stdin     bool              `json:"stdin"`
	Timeout   float64           `json:"timeout"`
	PID       int               `json:"pid"`
	EOF       bool              `json:"eof"`
	Signal    string            `json:"signal"`
	Path      string            `json:"path"`
	Dst       string            `json:"dst"`
	Depth     int               `json:"depth"`
	Parents   bool              `json:"parents"`
	Recursive bool              `json:"recursive"`
	More      bool              `json:"more"`
	Mode      *uint32           `json:"mode"`
	AfterSeq  uint64            `json:"after_seq"`
	Pty       *PtySize          `json:"pty"`
	Cols      uint16            `json:"cols"`
	Rows      uint16            `json:"rows"`
	Nonce     string            `json:"nonce"`
	Target    uint64            `json:"target"`
}

// PtySize is a terminal's size.
type PtySize struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// DecodeRequest parses and checks a request header. A *BadFrame carries the request id when
// one could be read, so the error reaches the right waiter.
func DecodeRequest(header []byte) (*Request, error) {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(header))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var probe struct {
			ID uint64 `json:"id"`
		}
		_ = json.Unmarshal(header, &probe)
		return nil, &BadFrame{ID: probe.ID, Reason: "bad header: " + err.Error()}
	}
	if dec.More() {
		return nil, &BadFrame{ID: req.ID, Reason: "trailing data after the header"}
	}
	if req.ID == 0 {
		return nil, &BadFrame{Reason: "id must be a positive integer"}
	}
	if req.Op == "" {
		return nil, &BadFrame{ID: req.ID, Reason: "op is missing"}
	}
	return &req, nil
}

// Writer sends frames; safe for concurrent use (one frame is written whole at a time).
type Writer struct {
	mu sync.Mutex
	w  *bufio.Writer
}

// NewWriter wraps the peer's stream.
func NewWriter(w io.Writer) *Writer { return &Writer{w: bufio.NewWriterSize(w, 64<<10)} }

// Send writes one frame and flushes it. The header is any JSON-encodable value.
func (w *Writer) Send(header any, payload []byte) error {
	h, err := json.Marshal(header)
	if err != nil {
		return err
	}
	return w.SendRaw(h, payload)
}

// SendRaw writes one frame whose header is already encoded (byte for byte as given).
func (w *Writer) SendRaw(h, payload []byte) error {
	n := 4 + len(h) + len(payload)
	if n > MaxFrame {
		return fmt.Errorf("frame of %d bytes exceeds %d", n, MaxFrame)
	}
	var prefix [8]byte
	binary.BigEndian.PutUint32(prefix[:4], uint32(n))
	binary.BigEndian.PutUint32(prefix[4:], uint32(len(h)))
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.w.Write(prefix[:]); err != nil {
		return err
	}
	if _, err := w.w.Write(h); err != nil {
		return err
	}
	if _, err := w.w.Write(payload); err != nil {
		return err
	}
	return w.w.Flush()
}

// Msg is a response header.
type Msg map[string]any

// Error sends an error frame for request id (0: about the connection, no request).
func (w *Writer) Error(id uint64, code, message string) {
	_ = w.Send(Msg{"type": "error", "id": id, "code": code, "message": message}, nil)
}

// OK sends the final success frame of request id with extra fields.
func (w *Writer) OK(id uint64, fields Msg) {
	m := Msg{"type": "ok", "id": id}
	for k, v := range fields {
		m[k] = v
	}
	_ = w.Send(m, nil)
}
