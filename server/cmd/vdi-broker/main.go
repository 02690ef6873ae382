// Command vdi-broker is the undervdi broker on the KVM server: it keeps a pool
// of disposable VMs on libvirt and hands them to kiosks.
//
//	vdi-broker run    [-config FILE]          run the daemon (the systemd unit does)
//	vdi-broker status [-config FILE] [-json]  show the pool and every VM
//	vdi-broker end    [-config FILE] VM [why] end the session on a VM, destroying it
//	vdi-broker publish  [-config FILE]        publish a new version of the golden VM
//	vdi-broker rollback [-config FILE]        make the previous version current again
//	vdi-broker versions [-config FILE]        list the published versions
//	vdi-broker drain  [-config FILE] [why]    start no new sessions; running ones go on
//	vdi-broker resume [-config FILE]          start new sessions again
//	vdi-broker resize [-config FILE] SIZE     keep SIZE clean VMs until a restart
//	vdi-broker audit  [-config FILE] [-kiosk K] [-vm V] [-event E] [-since 2h] [-n 50]
//	vdi-broker passwd [-config FILE] [-role viewer|operator] [-remove] USER
//	vdi-broker token  add [-role R] [-expires 90d] NAME | list | revoke NAME
//	vdi-broker kiosk  reboot|message|out-of-order|in-order|screenshot ID ... | refresh-ads
//	vdi-broker check  [-config FILE]          validate the config and the golden VM
//	vdi-broker check-host [-config FILE] [-json] [-allow-tcg]  can this server run the pool?
//	vdi-broker ca     [-config FILE]          print the site CA kiosks verify the broker with
//	vdi-broker example-config                 print the documented example config
//	vdi-broker import-legacy [-o FILE] /etc/vm_manager.conf  a config from the original's
//
// The verbs that talk to a running broker use its API on the admin socket,
// or with -url https://broker:8443 its HTTPS API, with $UNDERVDI_TOKEN.
package main

import (
	"fmt"
	"io"
	"os"
)

// Exit statuses; 2 tells systemd (RestartPreventExitStatus) not to retry.
const (
	exitOK    = 0
	exitError = 1
	exitSetup = 2
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	verb := "run"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		verb, args = args[0], args[1:]
	}
	switch verb {
	case "run":
		return runDaemon(args, stderr)
	case "status":
		return status(args, stdout, stderr)
	case "check":
		return check(args, stdout, stderr)
	case "check-host":
		return checkHost(args, stdout, stderr)
	case "ca":
		return ca(args, stdout, stderr)
	case "end":
		return end(args, stdout, stderr)
	case "publish":
		return publish(args, stdout, stderr)
	case "rollback":
		return rollback(args, stdout, stderr)
	case "versions":
		return versions(args, stdout, stderr)
	case "drain":
		return drain(args, stdout, stderr)
	case "resume":
		return resume(args, stdout, stderr)
	case "resize":
		return resize(args, stdout, stderr)
	case "audit":
		return audit(args, stdout, stderr)
	case "passwd":
		return passwd(args, stdout, stderr)
	case "token":
		return token(args, stdout, stderr)
	case "kiosk":
		return kiosk(args, stdout, stderr)
	case "example-config":
		return exampleConfig(stdout)
	case "import-legacy":
		return importLegacy(args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "vdi-broker: unknown command %q\n%s", verb, usage)
	return exitSetup
}

const usage = `usage:
  vdi-broker run    [-config FILE]          run the daemon
  vdi-broker status [-config FILE] [-json]  show the pool and every VM
  vdi-broker end    [-config FILE] VM [why] end the session on a VM, destroying it
  vdi-broker publish  [-config FILE] [-no-wait]  publish a new version of the golden VM
  vdi-broker rollback [-config FILE]        make the previous version current again
  vdi-broker versions [-config FILE]        list the published versions
  vdi-broker drain  [-config FILE] [why]    start no new sessions; running ones go on
  vdi-broker resume [-config FILE]          start new sessions again
  vdi-broker resize [-config FILE] SIZE     keep SIZE clean VMs ready, until a restart
  vdi-broker audit  [-config FILE] [-kiosk K] [-vm V] [-event E] [-since 2h] [-n 50]
                                            the audit log, newest first
  vdi-broker passwd [-config FILE] [-role viewer|operator] [-remove] USER
                                            set a console/API user's password
  vdi-broker token  add [-role viewer|operator] [-expires 90d] NAME | list | revoke NAME
                                            API tokens for scripts and Prometheus
  vdi-broker kiosk  reboot|message|out-of-order|in-order|screenshot ID ... | refresh-ads
                                            an operator's commands to kiosks (vdi-broker kiosk for more)
  (verbs that talk to the broker take -url https://host:8443 [-ca FILE] for its
   HTTPS API, with an API token in $UNDERVDI_TOKEN, instead of the admin socket)
  vdi-broker check  [-config FILE]          validate the config and the golden VM
  vdi-broker check-host [-config FILE] [-json] [-allow-tcg]
                                            KVM, libvirt, storage, memory, ports, firewall, time, SELinux
  vdi-broker ca     [-config FILE]          print the site CA kiosks verify the broker with
  vdi-broker example-config                 print the documented example config
  vdi-broker import-legacy [-o FILE] /etc/vm_manager.conf
                                            a config from the original's, with what it could not carry over
`
