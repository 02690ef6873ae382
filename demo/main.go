// Command demo shows undervdi working on this machine: it builds the tiny
// golden VM, runs the real vdi-broker binary with a pool of 2 disposable
// clones on libvirt, and prints the pool's state as it changes. Ctrl-C stops
// the broker and removes everything the demo made.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"undervdi/internal/testbed"
	"undervdi/server/broker"
	"undervdi/server/domxml"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	size := fs.Int("pool", 2, "clean VMs to keep ready")
	stopWhenFull := fs.Bool("stop-when-full", false, "stop once the pool is full (for scripts)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	fmt.Fprintln(stdout, "==> building the tiny golden VM (Debian kernel + u-root + qemu-guest-agent) and defining it in libvirt")
	bed, err := testbed.Setup(ctx, "demo", log)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(stdout, "==> removing the demo's VMs, overlays and golden")
		if err := bed.Close(); err != nil {
			fmt.Fprintln(stderr, "cleanup:", err)
		}
	}()
	cfg := bed.Config(*size)
	cfg.LogLevel = "info"
	cfgPath := filepath.Join(bed.Root, "vdi-broker.toml")
	if err := writeTOML(cfgPath, cfg); err != nil {
		return err
	}
	bin := filepath.Join(bed.Root, "vdi-broker")
	if out, err := exec.Command("go", "build", "-o", bin, "./server/cmd/vdi-broker").CombinedOutput(); err != nil {
		return fmt.Errorf("go build vdi-broker: %v: %s", err, out)
	}

	fmt.Fprintf(stdout, "==> starting vdi-broker: golden %s, pool %s of %d, config %s\n", cfg.Golden, cfg.PoolName, *size, cfgPath)
	fmt.Fprintf(stdout, "    in another shell: %s status -socket %s\n", bin, cfg.AdminSocket)
	cmd := exec.Command(bin, "run", "-config", cfgPath)
	cmd.Stderr = prefixWriter{w: stderr, prefix: "broker| "}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	}()

	start := time.Now()
	last, full := "", false
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-exited:
			exited <- err
			return fmt.Errorf("vdi-broker exited: %v", err)
		case <-time.After(time.Second):
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := broker.FetchStatus(qctx, cfg.AdminSocket)
		cancel()
		if err != nil {
			continue // still starting
		}
		if shape := stateShape(s); shape != last {
			last = shape
			fmt.Fprintf(stdout, "\n--- %s (+%s)\n", time.Now().Format("15:04:05"), time.Since(start).Round(time.Second))
			s.WriteTable(stdout, time.Now())
		}
		if !full && s.Pool.Counts[domxml.Clean] == *size {
			full = true
			fmt.Fprintf(stdout, "\n==> pool full: %d clean VMs booted and waiting, %s after start. Ctrl-C ends the demo.\n", *size, time.Since(start).Round(time.Second))
			if *stopWhenFull {
				return nil
			}
		}
	}
}

// stateShape is what changes in the status that is worth printing again:
// the VMs and their states, not how long they have been in them.
func stateShape(s *broker.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v %q %q %q|", s.Pool.Connected, s.Pool.Paused, s.Pool.Degraded, s.Pool.Memory)
	for _, v := range s.Pool.VMs {
		fmt.Fprintf(&b, "%s=%s,", v.Name, v.State)
	}
	return b.String()
}

func writeTOML(path string, v any) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := toml.NewEncoder(f).Encode(v); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// prefixWriter marks the broker's log lines in the demo's output.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

func (p prefixWriter) Write(b []byte) (int, error) {
	lines := strings.SplitAfter(string(b), "\n")
	var out strings.Builder
	for _, l := range lines {
		if l != "" {
			out.WriteString(p.prefix + l)
		}
	}
	if _, err := io.WriteString(p.w, out.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}
