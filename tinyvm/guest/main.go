// Command guest is the uinit of the tiny golden VM: once u-root's init has
// loaded the virtio modules (from /lib/modules-load.d), it runs Debian's
// qemu-guest-agent on the agent's virtio port so the broker's readiness check
// is the real one. Run with arguments, it is the guest's test tools (tool.go).
// Installed as /sbin/shutdown it
// powers the VM off, which is what qemu-ga runs for guest-shutdown.
package main

import (
	"fmt"
	"golang.org/x/sys/unix"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	agentPortName = "org.qemu.guest_agent.0"
	qemuGA        = "/usr/sbin/qemu-ga"
)

func main() {
	log.SetPrefix("tinyvm: ")
	log.SetFlags(0)
	switch filepath.Base(os.Args[0]) {
	case "shutdown", "poweroff", "halt", "reboot":
		powerOff()
	}
	if len(os.Args) > 1 {
		os.Exit(tool(os.Args[1:]))
	}
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// powerOff ends the VM the way a guest OS does: sync, then ACPI power off.
// The golden's domain XML maps reboot to destroy as well, so either way the
// broker sees the guest stop.
func powerOff() {
	unix.Sync()
	log.Print("powering off")
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		log.Fatalf("power off: %v", err)
	}
	select {}
}

func run() error {
	banner("booting")
	port, err := waitAgentPort(30 * time.Second)
	if err != nil {
		return err
	}
	banner("guest agent on " + port)
	// qemu-ga wants its state directory and a pid file location.
	if err := os.MkdirAll("/var/run", 0o755); err != nil {
		return err
	}
	return syscall.Exec(qemuGA, []string{qemuGA, "-m", "virtio-serial", "-p", port,
		"-t", "/tmp", "-f", "/tmp/qemu-ga.pid"}, os.Environ())
}

// banner writes to the serial console (for test logs) and to the screen, so
// that a SPICE client sees something that is not blank.
func banner(msg string) {
	log.Print(msg)
	if tty, err := os.OpenFile("/dev/tty0", os.O_WRONLY, 0); err == nil {
		fmt.Fprintf(tty, "\r\n  undervdi tiny golden VM: %s\r\n", msg)
		tty.Close()
	}
}

// waitAgentPort finds the /dev/vportNpM whose name is the guest agent's.
// Without udev there is no /dev/virtio-ports symlink, so sysfs it is.
func waitAgentPort(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err == nil && strings.TrimSpace(string(b)) == agentPortName {
				dev := "/dev/" + filepath.Base(filepath.Dir(n))
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio port named %s after %v (is the agent channel in the domain XML?)", agentPortName, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
