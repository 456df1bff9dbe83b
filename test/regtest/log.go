package regtest

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap/zapcore"
)

// Log holds a log's lines as they arrive, from a process's stderr (Add) or
// from a zap logger (Core), so that a test reads the JSON records it wants
// (Records) or waits for one (Wait) instead of polling.
type Log struct {
	mu     sync.Mutex
	lines  []string
	added  chan struct{} // closed and replaced whenever a line is added
	closed bool
}

// NewLog returns an empty Log.
func NewLog() *Log { return &Log{added: make(chan struct{})} }

// Add appends one line.
func (l *Log) Add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	close(l.added)
	l.added = make(chan struct{})
}

// Close says no more lines will come (the process exited): Wait stops
// waiting once it has read the last one.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.added)
	}
}

// Len is the number of lines so far: a mark for Records and Wait to start
// from.
func (l *Log) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// String is every line so far, for a failure message.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// Lines returns the lines from line from on.
func (l *Log) Lines(from int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines[min(from, len(l.lines)):])
}

// Records returns the JSON records from line from on for which match is true.
func (l *Log) Records(from int, match func(rec map[string]any) bool) []map[string]any {
	var out []map[string]any
	for _, line := range l.Lines(from) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && match(rec) {
			out = append(out, rec)
		}
	}
	return out
}

// ErrLogClosed is Wait's error when the log ended without the record.
var ErrLogClosed = errors.New("the log ended")

// Wait blocks until a JSON record from line from on matches, and returns it.
func (l *Log) Wait(ctx context.Context, from int, match func(rec map[string]any) bool) (map[string]any, error) {
	seen := from
	for {
		l.mu.Lock()
		lines, next, closed := l.lines[min(seen, len(l.lines)):], l.added, l.closed
		seen = len(l.lines)
		l.mu.Unlock()
		for _, line := range lines {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && match(rec) {
				return rec, nil
			}
		}
		if closed {
			return nil, ErrLogClosed
		}
		select {
		case <-next:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Msg matches the records whose message is msg.
func Msg(msg string) func(rec map[string]any) bool {
	return func(rec map[string]any) bool { return rec["msg"] == msg }
}

// Core is a zap core that adds every entry at level or above to l as a JSON
// line (numbers come back from Records as float64). Tee it beside another
// core to wait for an in-process logger's lines.
func (l *Log) Core(level zapcore.LevelEnabler) zapcore.Core {
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{MessageKey: "msg", LevelKey: "level", NameKey: "logger",
		EncodeLevel: zapcore.LowercaseLevelEncoder, EncodeDuration: zapcore.StringDurationEncoder})
	return zapcore.NewCore(enc, zapcore.AddSync(lineWriter{l}), level)
}

// lineWriter adds each write (one encoded entry) as a line.
type lineWriter struct{ l *Log }

func (w lineWriter) Write(p []byte) (int, error) {
	w.l.Add(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
