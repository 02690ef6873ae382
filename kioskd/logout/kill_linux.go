package logout

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// poll is how often the kill functions look whether processes are gone.
const poll = 20 * time.Millisecond

// killWait is how long processes get to vanish after SIGKILL.
const killWait = 2 * time.Second

// A proc is one process as /proc describes it.
type proc struct {
	pid   int
	name  string
	uid   int // real uid
	pgrp  int
	state byte // R, S, D, Z (zombie), X (dead), ...
}

// dead reports whether p has exited: a zombie only waits to be reaped.
func (p proc) dead() bool { return p.state == 'Z' || p.state == 'X' }

func (p proc) String() string { return fmt.Sprintf("%d (%s)", p.pid, p.name) }

// KillUser ends every process whose real uid is uid: SIGTERM, up to grace
// for them to exit, then SIGKILL until none is left. It scans procRoot
// (normally "/proc"), so it also finds processes that left the viewer's
// process group or session. It refuses uid 0, and returns an error naming
// the processes that survived.
func KillUser(procRoot string, uid int, grace time.Duration) error {
	if uid <= 0 {
		return fmt.Errorf("logout: refusing to kill the processes of uid %d", uid)
	}
	owned := func(p proc) bool { return p.uid == uid }
	err := kill(procRoot, owned, grace)
	if err != nil {
		return fmt.Errorf("logout: killing the processes of uid %d: %w", uid, err)
	}
	return nil
}

// KillGroup ends process group pgid: SIGTERM, up to grace for its
// processes to exit, then SIGKILL. It refuses pgid 0 and 1 and its own
// process group.
func KillGroup(pgid int, grace time.Duration) error {
	return killGroup("/proc", pgid, grace)
}

func killGroup(procRoot string, pgid int, grace time.Duration) error {
	if pgid <= 1 || pgid == syscall.Getpgrp() {
		return fmt.Errorf("logout: refusing to kill process group %d", pgid)
	}
	member := func(p proc) bool { return p.pgrp == pgid }
	signal := func(_ []proc, sig syscall.Signal) error {
		if err := syscall.Kill(-pgid, sig); err != nil && err != syscall.ESRCH {
			return fmt.Errorf("%v: %w", sig, err)
		}
		return nil
	}
	if err := killWith(procRoot, member, grace, signal); err != nil {
		return fmt.Errorf("logout: killing process group %d: %w", pgid, err)
	}
	return nil
}

// kill signals the processes that match one by one.
func kill(procRoot string, match func(proc) bool, grace time.Duration) error {
	signal := func(ps []proc, sig syscall.Signal) error {
		var errs []error
		for _, p := range ps {
			if err := signalIf(procRoot, p.pid, sig, match); err != nil {
				errs = append(errs, fmt.Errorf("%v to %v: %w", sig, p, err))
			}
		}
		return errors.Join(errs...)
	}
	return killWith(procRoot, match, grace, signal)
}

// killWith sends SIGTERM to the live processes that match, waits up to
// grace for them to exit, then sends SIGKILL (again, to those forked
// meanwhile) until none is left or killWait has passed.
func killWith(procRoot string, match func(proc) bool, grace time.Duration, signal func([]proc, syscall.Signal) error) error {
	ps, err := live(procRoot, match)
	if len(ps) == 0 {
		return err
	}
	errs := []error{err, signal(ps, syscall.SIGTERM)}
	ps, err = waitGone(procRoot, match, grace)
	if len(ps) == 0 {
		return errors.Join(append(errs, err)...)
	}
	deadline := time.Now().Add(killWait)
	for len(ps) > 0 && time.Now().Before(deadline) {
		if err := signal(ps, syscall.SIGKILL); err != nil {
			errs = append(errs, err)
			break
		}
		ps, err = waitGone(procRoot, match, poll)
	}
	if len(ps) > 0 {
		errs = append(errs, err, fmt.Errorf("survived SIGKILL: %v", ps))
	}
	return errors.Join(errs...)
}

// waitGone waits up to d for the processes that match to exit, and returns
// those still alive.
func waitGone(procRoot string, match func(proc) bool, d time.Duration) ([]proc, error) {
	deadline := time.Now().Add(d)
	for {
		ps, err := live(procRoot, match)
		if len(ps) == 0 || err != nil || !time.Now().Before(deadline) {
			return ps, err
		}
		time.Sleep(min(poll, time.Until(deadline)))
	}
}

// signalIf sends sig to pid if it still matches. A pidfd pins the process
// between the check and the signal, so a recycled pid is never signalled.
func signalIf(procRoot string, pid int, sig syscall.Signal, match func(proc) bool) error {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case err == unix.ESRCH:
		return nil
	case err == nil:
		defer unix.Close(fd)
	default: // no pidfds (kernel < 5.3): plain kill(2)
		fd = -1
	}
	p, err := readProc(procRoot, pid)
	if gone(err) || (err == nil && (p.dead() || !match(p))) {
		return nil
	}
	if err != nil {
		return err
	}
	if fd >= 0 {
		err = unix.PidfdSendSignal(fd, sig, nil, 0)
	} else {
		err = unix.Kill(pid, sig)
	}
	if err == unix.ESRCH {
		return nil
	}
	return err
}

// live lists the processes under procRoot that match and have not exited.
func live(procRoot string, match func(proc) bool) ([]proc, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var ps []proc
	var errs []error
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		p, err := readProc(procRoot, pid)
		if gone(err) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !p.dead() && match(p) {
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b proc) int { return a.pid - b.pid })
	return ps, errors.Join(errs...)
}

// gone reports whether err says the process has gone away.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

// readProc reads the name, real uid and state of pid from
// <procRoot>/<pid>/status and its process group from .../stat.
func readProc(procRoot string, pid int) (proc, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	p := proc{pid: pid, uid: -1}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return p, err
	}
	for line := range strings.Lines(string(status)) {
		key, value, _ := strings.Cut(strings.TrimSpace(line), ":")
		fields := strings.Fields(value)
		if len(fields) == 0 {
			continue
		}
		switch key {
		case "Name":
			p.name = fields[0]
		case "State":
			p.state = fields[0][0]
		case "Uid":
			p.uid, err = strconv.Atoi(fields[0])
			if err != nil {
				return p, fmt.Errorf("%s/status: Uid: %w", dir, err)
			}
		}
	}
	if p.uid < 0 || p.state == 0 {
		return p, fmt.Errorf("%s/status: no Uid or State", dir)
	}
	// stat is "pid (comm) state ppid pgrp ..."; comm may hold spaces and parentheses.
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return p, err
	}
	i := strings.LastIndexByte(string(stat), ')')
	fields := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(fields) < 3 {
		return p, fmt.Errorf("%s/stat: too short", dir)
	}
	if p.pgrp, err = strconv.Atoi(fields[2]); err != nil {
		return p, fmt.Errorf("%s/stat: pgrp: %w", dir, err)
	}
	return p, nil
}
