package session

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A kiosk's connection is read in two parts. Reading and handling a
// message takes a deep stack (TLS records, JSON, the handling, the
// answer's TLS record), and a goroutine keeps the stack it grew until a
// garbage collection finds it mostly unused, which never happens while it
// waits inside a TLS read. A thousand idle kiosks would keep a thousand
// such stacks, 8 KiB each. So the connection's own goroutine only waits
// until the kiosk's next bytes arrive, without reading them, and the
// messages are read and handled by one of a few goroutines kept for such
// deep work (onDeepStack). The waiting goroutine keeps the smallest stack
// Go has (docs/benchmarks.md).

// kioskReader reads a kiosk's messages: from a TLS connection, or from a
// buffer over a plain one.
type kioskReader struct {
	src  io.Reader     // the TLS connection, or the plain one's buffer
	tls  *tls.Conn     // nil: plain
	buf  *bufio.Reader // the plain connection's buffer
	wait func() error  // waits until the socket has bytes; nil: it cannot
	// A byte pending found in the TLS connection's buffers, which the next
	// message starts with.
	peeked  [1]byte
	hasPeek bool
}

func newKioskReader(c net.Conn) *kioskReader {
	r := &kioskReader{src: c}
	raw := c
	if t, ok := c.(*tls.Conn); ok {
		// A TLS connection reads a whole record and hands it out from its
		// own buffer.
		r.tls, raw = t, t.NetConn()
	} else {
		// Anything else gets a small buffer, so that a usual frame is one
		// read, not two.
		r.buf = bufio.NewReaderSize(c, 1024)
		r.src = r.buf
	}
	r.wait = readable(raw)
	return r
}

// Read reads the byte pending first.
func (r *kioskReader) Read(p []byte) (int, error) {
	if r.hasPeek && len(p) > 0 {
		p[0], r.hasPeek = r.peeked[0], false
		return 1, nil
	}
	return r.src.Read(p)
}

// pending says whether bytes of the kiosk's were read from the socket and
// not yet handed out: a TLS record, or a buffer, may hold more than the
// message just read. Waiting on the socket for those would wait forever.
// For TLS it reads with a deadline already past, which takes what the
// connection holds and asks the socket for nothing; the caller sets the
// read deadline again before its next read.
func (r *kioskReader) pending() bool {
	switch {
	case r.hasPeek:
		return true
	case r.buf != nil:
		return r.buf.Buffered() > 0
	case r.tls == nil:
		return false
	}
	if err := r.tls.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return true // the next read meets the connection's trouble
	}
	n, err := r.tls.Read(r.peeked[:])
	if n == 1 {
		r.hasPeek = true
		return true
	}
	// An error other than the deadline (a close, an alert) is kept by the
	// TLS connection: the next read meets it.
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// readable returns a function that waits until the socket under c has
// bytes to read (or is closed, or has failed), without reading them, within
// c's read deadline; nil if c is not a socket.
func readable(c net.Conn) func() error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	b := new(byte)
	ready := func(fd uintptr) bool {
		// recv(2) with MSG_PEEK looks without taking. unix.Recvfrom would
		// allocate the sender's address at every look; a connected socket
		// has none to give. MSG_DONTWAIT: it cannot block.
		_, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(b)), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		return errno != unix.EAGAIN // bytes, the end, or an error: the read tells which
	}
	return func() error { return rc.Read(ready) }
}

// onDeepStack runs f on one of the goroutines kept for deep work, and
// returns what it returns: the deep stack f grows stays with that
// goroutine.
func onDeepStack[T any](f func() T) T {
	ch := make(chan T, 1)
	deepWork.run(func() { ch <- f() })
	return <-ch
}

// deepPool keeps a few goroutines for deep work, each with the stack it
// grew. A goroutine started for each message instead would start on the
// smallest stack and grow it, copying it twice, every time: a fifth more of
// the broker's CPU for a thousand idle kiosks' heartbeats. A job that
// blocks (a partial message, a kiosk slow to take its answer) keeps its
// goroutine, and jobs beyond the goroutines kept get one of their own.
type deepPool struct {
	jobs    chan func()
	workers atomic.Int32
}

// maxDeepWorkers is how many goroutines are kept for deep work, for the
// whole process.
const maxDeepWorkers = 8

var deepWork = deepPool{jobs: make(chan func())}

// run has job run by a kept goroutine that waits for work, or by a new
// one that is kept if there are fewer than maxDeepWorkers, or by a
// goroutine of its own.
func (d *deepPool) run(job func()) {
	select {
	case d.jobs <- job:
		return
	default:
	}
	if d.workers.Add(1) <= maxDeepWorkers {
		go d.work(job)
		return
	}
	d.workers.Add(-1)
	go job()
}

func (d *deepPool) work(job func()) {
	for {
		job()
		job = <-d.jobs
	}
}
