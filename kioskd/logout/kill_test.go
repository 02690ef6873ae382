package logout

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// testUser is a throwaway system user whose processes the tests start and kill.
const testUser = "undervdi-logouttest"

// testUserIDs returns the uid and gid of testUser, creating the user if need
// be. It skips the test unless it runs as root.
func testUserIDs(t *testing.T) (uid, gid int) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to run processes as another user")
	}
	u, err := user.Lookup(testUser)
	if err != nil {
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
			"--shell", "/usr/sbin/nologin", testUser).CombinedOutput()
		if err != nil {
			t.Fatalf("useradd %s: %v\n%s", testUser, err, out)
		}
		if u, err = user.Lookup(testUser); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	if uid == 0 {
		t.Fatalf("%s has uid 0", testUser)
	}
	return uid, gid
}

// asUser runs a process as uid:gid (or as we are, if uid is 0).
func asUser(uid, gid int) *syscall.SysProcAttr {
	if uid == 0 {
		return &syscall.SysProcAttr{}
	}
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
}

// A started process, reaped in the background.
type started struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once reaped
}

// start starts a process that the test kills at the end if it is still there.
func start(t *testing.T, attr *syscall.SysProcAttr, name string, args ...string) *started {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &started{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-s.done
	})
	return s
}

// signal waits for s to be reaped and returns the signal that ended it.
func (s *started) signal(t *testing.T) syscall.Signal {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%v still running", s.cmd.Args)
	}
	if ws, ok := s.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ws.Signal()
	}
	return 0
}

// waitFor waits until at least n live processes match.
func waitFor(t *testing.T, n int, match func(proc) bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(poll) {
		ps, err := live("/proc", match)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %d processes, have %v", n, ps)
		}
	}
}

func TestKillUser(t *testing.T) {
	uid, gid := testUserIDs(t)
	owned := func(p proc) bool { return p.uid == uid }
	if ps, _ := live("/proc", owned); len(ps) > 0 {
		t.Skipf("%s already runs processes we did not start: %v", testUser, ps)
	}
	t.Cleanup(func() { KillUser("/proc", uid, 0) }) // whatever the test left behind

	plain := start(t, asUser(uid, gid), "sleep", "300")
	stubborn := start(t, asUser(uid, gid), "sh", "-c", `trap "" TERM; sleep 300`)
	session := asUser(uid, gid)
	session.Setsid = true // out of our process group and session
	start(t, session, "sleep", "300")
	// A daemon: its parent exits, so nobody we know waits for it.
	daemon := exec.Command("sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 &")
	daemon.Dir, daemon.SysProcAttr = "/", asUser(uid, gid)
	if out, err := daemon.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", daemon.Args, err, out)
	}
	waitFor(t, 4, func(p proc) bool { return p.uid == uid && p.name == "sleep" })

	if err := KillUser("/proc", uid, 300*time.Millisecond); err != nil {
		t.Errorf("KillUser(/proc, %d, 300ms) = %v, want nil", uid, err)
	}
	if ps, err := live("/proc", owned); len(ps) > 0 || err != nil {
		t.Errorf("live(/proc, uid %d) = %v, %v after KillUser, want none", uid, ps, err)
	}
	if sig := plain.signal(t); sig != syscall.SIGTERM {
		t.Errorf("sleep ended by %v, want %v", sig, syscall.SIGTERM)
	}
	if sig := stubborn.signal(t); sig != syscall.SIGKILL {
		t.Errorf("sh ignoring SIGTERM ended by %v, want %v", sig, syscall.SIGKILL)
	}
}

func TestKillUserRefusesRoot(t *testing.T) {
	if err := KillUser("/proc", 0, time.Second); err == nil {
		t.Errorf("KillUser(/proc, 0, 1s) = nil, want an error")
	}
}

func TestKillGroup(t *testing.T) {
	sh := start(t, &syscall.SysProcAttr{Setpgid: true}, "sh", "-c", `trap "" TERM; sleep 300 & sleep 300 & wait`)
	pgid := sh.cmd.Process.Pid
	member := func(p proc) bool { return p.pgrp == pgid }
	waitFor(t, 3, member)

	if err := KillGroup(pgid, 200*time.Millisecond); err != nil {
		t.Errorf("KillGroup(%d, 200ms) = %v, want nil", pgid, err)
	}
	if sig := sh.signal(t); sig != syscall.SIGKILL {
		t.Errorf("sh ignoring SIGTERM ended by %v, want %v", sig, syscall.SIGKILL)
	}
	if ps, err := live("/proc", member); len(ps) > 0 || err != nil {
		t.Errorf("live(/proc, pgrp %d) = %v, %v after KillGroup, want none", pgid, ps, err)
	}
	if err := KillGroup(pgid, time.Second); err != nil {
		t.Errorf("KillGroup(%d, 1s) of a group gone = %v, want nil", pgid, err)
	}
	for _, pgid := range []int{0, 1, syscall.Getpgrp()} {
		if err := KillGroup(pgid, time.Second); err == nil {
			t.Errorf("KillGroup(%d, 1s) = nil, want an error", pgid)
		}
	}
}

// TestLive reads a made-up /proc.
func TestLive(t *testing.T) {
	root := t.TempDir()
	for _, p := range []struct{ pid, status, stat string }{
		{"100", "Name:\tsleep\nState:\tS (sleeping)\nUid:\t1234\t1234\t1234\t1234\n", "100 (sleep) S 1 100 100 0"},
		{"101", "Name:\tdefunct\nState:\tZ (zombie)\nUid:\t1234\t1234\t1234\t1234\n", "101 (defunct) Z 1 101 101 0"},
		{"102", "Name:\tsu\nState:\tS (sleeping)\nUid:\t1234\t0\t0\t0\n", "102 (su) S 1 100 100 0"},
		{"103", "Name:\tsshd\nState:\tS (sleeping)\nUid:\t0\t1234\t1234\t1234\n", "103 (sshd) S 1 103 103 0"},
		{"104", "Name:\tx) 1 2 (y\nState:\tR (running)\nUid:\t1234\t1234\t1234\t1234\n", "104 (x) 1 2 (y) R 1 100 100 0"},
	} {
		dir := filepath.Join(root, p.pid)
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "status"), []byte(p.status), 0o644)
		os.WriteFile(filepath.Join(dir, "stat"), []byte(p.stat), 0o644)
	}
	os.Symlink("100", filepath.Join(root, "self"))
	os.Mkdir(filepath.Join(root, "sys"), 0o755)
	os.Mkdir(filepath.Join(root, "105"), 0o755) // exited while we looked

	pids := func(ps []proc) []int {
		var pids []int
		for _, p := range ps {
			pids = append(pids, p.pid)
		}
		return pids
	}
	ps, err := live(root, func(p proc) bool { return p.uid == 1234 })
	if want := []int{100, 102, 104}; !slices.Equal(pids(ps), want) || err != nil {
		t.Errorf("live(root, uid 1234) = %v, %v, want %v, nil", pids(ps), err, want)
	}
	ps, err = live(root, func(p proc) bool { return p.pgrp == 100 })
	if want := []int{100, 102, 104}; !slices.Equal(pids(ps), want) || err != nil {
		t.Errorf("live(root, pgrp 100) = %v, %v, want %v, nil", pids(ps), err, want)
	}
}
