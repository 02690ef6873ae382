package pxe

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Handler serves the files at the top of a network-boot directory to
// iPXE: GET and HEAD only, with ranges and Last-Modified, and no listings,
// subdirectories or dotfiles. Files are opened afresh for every request,
// so a new image can replace them at any time. The broker can mount it;
// Serve runs it on its own.
type Handler struct {
	Dir string
	Log *slog.Logger // access log at Debug; nil for none
	// Prefix is what a caller stripped from the path, for the log.
	Prefix string
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	lw := &loggingWriter{ResponseWriter: w}
	h.serve(lw, r)
	if h.Log != nil {
		h.Log.LogAttrs(r.Context(), slog.LevelDebug, "http",
			slog.String("remote", r.RemoteAddr), slog.String("method", r.Method),
			slog.String("path", h.Prefix+r.URL.Path), slog.String("range", r.Header.Get("Range")),
			slog.Int("status", lw.status()), slog.Int64("bytes", lw.bytes),
			slog.Duration("took", time.Since(start)), slog.String("agent", r.UserAgent()))
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, "/")
	if !ok || name == "" || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		http.NotFound(w, r)
		return
	}
	// OpenInRoot keeps symbolic links from leading out of Dir.
	f, err := os.OpenInRoot(h.Dir, name)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) && h.Log != nil {
			h.Log.Warn("http: opening a boot file", "path", r.URL.Path, "err", err)
		}
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	http.ServeContent(w, r, name, st.ModTime(), f)
}

// loggingWriter notes the status and size of a response for the access log.
type loggingWriter struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (w *loggingWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *loggingWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// ReadFrom keeps the server's sendfile path for the kernel and initramfs.
func (w *loggingWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := io.Copy(w.ResponseWriter, r)
	w.bytes += n
	return n, err
}

func (w *loggingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *loggingWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}

// Serve serves h on ln until ctx is done, then shuts down, letting
// downloads under way finish for a few seconds. log may be nil.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler: h,
		// A booting kiosk fetches a kernel and an image of some tens of MB,
		// perhaps slowly; a client that stalls is cut off at every phase.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      10 * time.Minute,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("serving network-boot files over HTTP", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(shutCtx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = srv.Close()
	}
	<-errc // http.ErrServerClosed
	return err
}
