package pool_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"undervdi/internal/procstat"
	"undervdi/kioskproto"
	"undervdi/server/broker"
	"undervdi/server/config"
	"undervdi/server/pool"
	"undervdi/server/session"
	"undervdi/server/siteca"
)

// The broker at scale: a thousand kiosks on one broker. The benchmark runs
// three processes, so that each figure is one process's own: this one
// coordinates; a child runs the broker's part that kiosks load — the pool
// (on the pool's in-memory hypervisor, as libvirt is not what is measured),
// the session manager and the kiosk protocol's TLS port, configured as
// vdi-broker configures them — and another child runs the kiosks, each with
// a TLS connection of its own that heartbeats as kioskd's does. They share
// this machine's two cores. The benchmark lives here, not with the broker,
// because the in-memory hypervisor is the pool's.

const (
	scaleRole   = "UNDERVDI_SCALE_ROLE" // broker or fleet: what this process is
	scaleKiosks = "UNDERVDI_SCALE_KIOSKS"
	scaleAddr   = "UNDERVDI_SCALE_ADDR" // the broker's kiosk port, for the fleet
	scaleCA     = "UNDERVDI_SCALE_CA"   // the site CA's directory
	scaleToken  = "0123456789abcdef"
	// scaleProfile, if set, is a directory where the broker writes CPU
	// profiles of the heartbeat window (heartbeat.pprof) and of the
	// handoff rounds (handoff.pprof), an execution trace of the rounds
	// (handoff.trace, for `go tool trace`: where a handoff waited), and at
	// the end its heap (heap.pprof, every 256th byte sampled), the
	// runtime's memory by kind (memstats.txt) and where the rounds waited
	// on locks and channels (mutex.pprof, block.pprof), for `go tool
	// pprof`. The figures of such a run are not the benchmark's.
	scaleProfile = "UNDERVDI_SCALE_PROFILE"
)

func TestMain(m *testing.M) {
	role := os.Getenv(scaleRole)
	if role == "" {
		os.Exit(m.Run())
	}
	n, _ := strconv.Atoi(os.Getenv(scaleKiosks))
	var err error
	switch role {
	case "broker":
		err = scaleBroker(n, os.Getenv(scaleCA), os.Stdin, os.Stdout)
	case "fleet":
		err = scaleFleet(n, os.Getenv(scaleAddr), os.Getenv(scaleCA), os.Stdin, os.Stdout)
	default:
		err = fmt.Errorf("%s=%q: broker or fleet", scaleRole, role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, role+":", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// BenchmarkBrokerScale puts 200, then 1000 kiosks on a broker whose pool
// tracks as many VMs, all clean. Per size, it measures:
//   - heartbeat-core-%: the broker's CPU while every kiosk is connected and
//     idle, over two idle heartbeat periods (sessions.idle_heartbeat, the
//     default 30 s), as a share of one core — what a fleet costs the broker
//     when nothing happens;
//   - session-heartbeat-core-%: the same with every kiosk in a session
//     (offered, not linked), beating at the session rate
//     (sessions.heartbeat, 5 s), over two of its periods;
//   - broker-p50-ms, broker-p99-ms: handoff at the broker (request read →
//     offer written) with every kiosk asking at the same moment, every round;
//   - kiosk-p99-ms: the same as the kiosks saw it, over loopback TLS;
//   - rss-MB: the broker process's peak resident memory (VmHWM) at the end,
//     in MB (benchstat shows it in MiB);
//   - cpu-µs/session: the broker's CPU per session of the rounds (request,
//     offer, end, the VM back in the pool), a figure of the broker alone
//     where the latencies above also hold the queue of kiosks ahead.
func BenchmarkBrokerScale(b *testing.B) {
	for _, n := range []int{200, 1000} {
		b.Run(fmt.Sprintf("kiosks=%d", n), func(b *testing.B) { benchScale(b, n) })
	}
}

func benchScale(b *testing.B, n int) {
	ca := b.TempDir()
	brk := startRole(b, "broker", n, ca, "")
	addr, ok := strings.CutPrefix(brk.line(b), "addr ")
	if !ok {
		b.Fatal("broker did not say its address")
	}
	fleet := startRole(b, "fleet", n, ca, addr)
	if got := fleet.line(b); got != "ready" {
		b.Fatalf("fleet: %q", got)
	}

	ss := config.Default().Sessions
	time.Sleep(ss.Heartbeat.D()) // the connections' setup is over
	// Idle kiosks beat once per idle period, each at its own moment: any
	// window of two periods holds two heartbeats of every kiosk, and one
	// of the pool's reconciles (every minute by default), as a longer run
	// would.
	window := 2 * ss.IdleHeartbeat.D()
	brk.profile(b, "heartbeat")
	before := brk.stats(b)
	time.Sleep(window)
	after := brk.stats(b)
	brk.profile(b, "handoff")
	cpu := float64(after.cpu-before.cpu) / float64(after.at.Sub(before.at))

	var seen []time.Duration
	rounds, start := 0, brk.stats(b)
	for b.Loop() {
		rounds++
		fleet.say(b, "go")
		line := fleet.line(b)
		b.StopTimer()
		seen = append(seen, durations(line)...)
		fleet.say(b, "end")
		if got := fleet.line(b); got != "ended" {
			b.Fatalf("fleet: %q", got)
		}
		brk.say(b, "idle") // every VM back in the pool
		if got := brk.line(b); got != "idle" {
			b.Fatalf("broker: %q", got)
		}
		b.StartTimer()
	}
	brk.profile(b, "heap")
	brk.say(b, "handoffs")
	at := durations(brk.line(b))
	end := brk.stats(b)
	perSession := (end.cpu - start.cpu) / time.Duration(rounds*n)
	if len(at) == 0 || len(seen) == 0 {
		b.Fatal("no handoffs measured")
	}

	// Every kiosk in a session (offered, not linked) beats at the session
	// rate: two of its periods.
	fleet.say(b, "go")
	fleet.line(b)
	before = brk.stats(b)
	time.Sleep(2 * ss.Heartbeat.D())
	after = brk.stats(b)
	busy := float64(after.cpu-before.cpu) / float64(after.at.Sub(before.at))
	fleet.say(b, "end")
	if got := fleet.line(b); got != "ended" {
		b.Fatalf("fleet: %q", got)
	}
	slices.Sort(at)
	slices.Sort(seen)
	b.ReportMetric(100*cpu, "heartbeat-core-%")
	b.ReportMetric(100*busy, "session-heartbeat-core-%")
	b.ReportMetric(ms(at[len(at)/2]), "broker-p50-ms")
	b.ReportMetric(ms(at[len(at)*99/100]), "broker-p99-ms")
	b.ReportMetric(ms(seen[len(seen)*99/100]), "kiosk-p99-ms")
	b.ReportMetric(float64(end.hwm)*1024/1e6, "rss-MB") // MB as benchstat reads the unit: 10⁶ bytes
	b.ReportMetric(float64(perSession.Nanoseconds())/1000, "cpu-µs/session")
}

// role is a child process of the benchmark, spoken to in lines.
type role struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

func startRole(b *testing.B, name string, n int, ca, addr string) *role {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if name == "fleet" {
		// The kiosks stand for machines of their own: they take what the
		// broker leaves of this machine's cores, not half of them.
		cmd = exec.Command("nice", "-n", "19", os.Args[0], "-test.run=^$")
	}
	cmd.Env = append(os.Environ(), scaleRole+"="+name, scaleKiosks+"="+strconv.Itoa(n), scaleCA+"="+ca, scaleAddr+"="+addr)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // gone with the benchmark
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close() // a child ends when its input does
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	r := &role{in: in, out: bufio.NewScanner(out)}
	r.out.Buffer(nil, 1<<22)
	return r
}

// profile has the broker end the CPU profile it writes, if any, and begin
// the next one (heap: write the heap's).
func (r *role) profile(b *testing.B, name string) {
	if os.Getenv(scaleProfile) != "" {
		r.say(b, "profile "+name)
	}
}

func (r *role) say(b *testing.B, line string) {
	if _, err := fmt.Fprintln(r.in, line); err != nil {
		b.Fatal(err)
	}
}

func (r *role) line(b *testing.B) string {
	if !r.out.Scan() {
		b.Fatal("a child of the benchmark is gone; its error is above")
	}
	return r.out.Text()
}

// procStats is what the broker says of its process.
type procStats struct {
	at       time.Time
	cpu      time.Duration // user and system time so far
	rss, hwm int64         // KiB: resident now, and at most
}

func (r *role) stats(b *testing.B) procStats {
	r.say(b, "stats")
	f := strings.Fields(r.line(b))
	if len(f) != 3 {
		b.Fatalf("broker stats: %q", f)
	}
	cpu, _ := strconv.ParseInt(f[0], 10, 64)
	rss, _ := strconv.ParseInt(f[1], 10, 64)
	hwm, _ := strconv.ParseInt(f[2], 10, 64)
	return procStats{at: time.Now(), cpu: time.Duration(cpu), rss: rss, hwm: hwm}
}

func durations(line string) []time.Duration {
	var out []time.Duration
	for _, f := range strings.Fields(line) {
		ns, err := strconv.ParseInt(f, 10, 64)
		if err == nil {
			out = append(out, time.Duration(ns))
		}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// scaleBroker runs the broker's side for n kiosks until its input ends.
// Commands: stats (CPU ns, RSS and peak RSS KiB), idle (waits until no
// session is left and every VM is clean), handoffs (every handoff time
// since the last such command, ns).
func scaleBroker(n int, caDir string, in io.Reader, out io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	broker.TuneGC() // as vdi-broker does
	if os.Getenv(scaleProfile) != "" {
		runtime.MemProfileRate = 256 // a heap profile that names what a kiosk costs
	}
	cfg := config.Default()
	cfg.PoolName, cfg.Golden, cfg.PoolSize, cfg.MaxVMs = "scale", "golden", n, n
	cfg.Network.Subnet = "10.213.0.0/21" // room for every VM's address
	cfg.Kiosks = []config.Kiosk{{ID: "k-*", Address: "127.0.0.0/8", Token: scaleToken, MaxKiosks: n}}
	if err := cfg.Validate(); err != nil {
		return err
	}
	site, _, err := siteca.Ensure(caDir)
	if err != nil {
		return err
	}

	p := pool.New(broker.PoolConfig(cfg, nil), pool.NewFakeHypervisor(), log)
	if err := p.Start(ctx); err != nil {
		return err
	}
	go p.Run(ctx)
	for p.CleanCount() < n {
		time.Sleep(10 * time.Millisecond)
	}

	reg, err := session.NewRegistry(cfg.Kiosks)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var handoffs []string
	sc := broker.SessionConfig(cfg)
	sc.ConnectWindow = time.Minute // the kiosks never link: their offers must outlast a round
	sc.QueueLimit, sc.MaxConnsPerAddr = n, n
	sc.GatewayPort, sc.GatewayTLSPort = 5900, 5901
	sc.Metrics = session.Metrics{Handoff: func(d time.Duration, _ bool) {
		mu.Lock()
		handoffs = append(handoffs, strconv.FormatInt(int64(d), 10))
		mu.Unlock()
	}}
	m := session.New(sc, p, reg, session.NewAudit(io.Discard, log), log)
	go func() {
		for {
			select {
			case e := <-p.Ended():
				m.VMEnded(e)
			case <-ctx.Done():
				return
			}
		}
	}()
	go m.Run(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go m.KioskPort().Serve(ctx, tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{site.Certificate}}))
	fmt.Fprintln(out, "addr", ln.Addr())

	cmds := bufio.NewScanner(in)
	for cmds.Scan() {
		switch cmds.Text() {
		case "stats":
			var ru syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			rss, err := procstat.StatusKiB(0, "VmRSS")
			hwm, herr := procstat.StatusKiB(0, "VmHWM")
			if err = errors.Join(err, herr); err != nil {
				return err
			}
			fmt.Fprintln(out, int64(cpu), rss, hwm)
		case "idle":
			for len(m.Leases()) > 0 || p.CleanCount() < n {
				time.Sleep(20 * time.Millisecond)
			}
			fmt.Fprintln(out, "idle")
		case "profile heartbeat", "profile handoff", "profile heap":
			if err := profile(strings.TrimPrefix(cmds.Text(), "profile ")); err != nil {
				return err
			}
		case "handoffs":
			mu.Lock()
			fmt.Fprintln(out, strings.Join(handoffs, " "))
			handoffs = nil
			mu.Unlock()
		}
	}
	return cmds.Err()
}

// profile ends the CPU profile under way, if any, and starts the one named,
// or writes the heap's.
func profile(name string) error {
	pprof.StopCPUProfile()
	f, err := os.Create(filepath.Join(os.Getenv(scaleProfile), name+".pprof"))
	if err != nil {
		return err
	}
	if name == "handoff" {
		runtime.SetMutexProfileFraction(1)
		runtime.SetBlockProfileRate(1000)
		tf, err := os.Create(filepath.Join(os.Getenv(scaleProfile), "handoff.trace"))
		if err != nil {
			return err
		}
		if err := trace.Start(tf); err != nil {
			return err
		}
	}
	if name == "heap" {
		trace.Stop()
		defer f.Close()
		for _, n := range []string{"mutex", "block"} {
			g, _ := os.Create(filepath.Join(os.Getenv(scaleProfile), n+".pprof"))
			pprof.Lookup(n).WriteTo(g, 0)
			g.Close()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		os.WriteFile(filepath.Join(os.Getenv(scaleProfile), "memstats.txt"), fmt.Appendf(nil,
			"heap in use %d KiB (live %d KiB), stacks %d KiB, spans %d KiB, GC metadata %d KiB, other %d KiB, from the OS %d KiB\n",
			ms.HeapInuse>>10, ms.HeapAlloc>>10, ms.StackInuse>>10, ms.MSpanInuse>>10, ms.GCSys>>10, ms.OtherSys>>10, ms.Sys>>10), 0o644)
		return pprof.WriteHeapProfile(f)
	}
	return pprof.StartCPUProfile(f) // the file is closed when the process ends
}

// scaleFleet connects n kiosks to the broker at addr and serves commands:
// go (every kiosk asks for a session at the same moment; prints the time
// each waited for its offer, ns), end (every kiosk ends its session).
func scaleFleet(n int, addr, caDir string, in io.Reader, out io.Writer) error {
	site, _, err := siteca.Ensure(caDir)
	if err != nil {
		return err
	}
	ctx := context.Background()
	tc := &tls.Config{ServerName: siteca.ServerName, RootCAs: site.Pool(), MinVersion: tls.VersionTLS12}
	clients := make([]*kioskproto.Client, n)
	for i := range clients {
		c, err := kioskproto.Dialer{Addr: addr, TLS: tc}.Dial(ctx, fmt.Sprintf("k-%04d", i), scaleToken, "bench")
		if err != nil {
			return err
		}
		clients[i] = c
	}
	fmt.Fprintln(out, "ready")
	cmds := bufio.NewScanner(in)
	for cmds.Scan() {
		switch cmds.Text() {
		case "go":
			lat := make([]string, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i, c := range clients {
				wg.Go(func() {
					<-start
					t0 := time.Now()
					c.Request(time.Time{})
					for msg := range c.Messages() {
						if msg.Type == kioskproto.TOffer {
							lat[i] = strconv.FormatInt(int64(time.Since(t0)), 10)
							return
						}
					}
				})
			}
			close(start)
			wg.Wait()
			fmt.Fprintln(out, strings.Join(lat, " "))
		case "end":
			for _, c := range clients {
				c.End("next round")
			}
			var wg sync.WaitGroup
			for _, c := range clients {
				wg.Go(func() { drain(c) })
			}
			wg.Wait()
			fmt.Fprintln(out, "ended")
		}
	}
	return cmds.Err()
}

// drain discards what a client was sent (the end of the last round).
func drain(c *kioskproto.Client) {
	for {
		select {
		case <-c.Messages():
		case <-time.After(5 * time.Millisecond):
			return
		}
	}
}
