package pool

// State is where a VM is in its life. Each state names what the pool waits
// for; machine.go holds every way out of each one.
type State string

// The states, in the order a VM usually passes them.
const (
	Creating   State = "creating"   // overlays, definition and start under way
	Cancelled  State = "cancelled"  // told to end while creating: wiped once the creation returns
	Booting    State = "booting"    // running; waiting for its guest agent to connect
	Readying   State = "readying"   // agent connected (or none): pinging it, probing the display, recording clean
	Adopting   State = "adopting"   // found clean in libvirt at start: checked the same way before it is offered
	Clean      State = "clean"      // ready, never offered or linked
	Offered    State = "offered"    // handed to a kiosk, not linked yet
	Linking    State = "linking"    // a client's first link: in-use is being recorded; the link waits for it
	InUse      State = "in-use"     // a client linked: from now on it will only be destroyed
	Destroying State = "destroying" // domain being destroyed and undefined; retried until it is gone
	Deleting   State = "deleting"   // overlays being deleted and verified gone; retried until they are
	Gone       State = "gone"       // nothing of it is left: off the table
)

// States lists every state, for tables and tests.
var States = []State{Creating, Cancelled, Booting, Readying, Adopting, Clean, Offered, Linking, InUse, Destroying, Deleting, Gone}

// What a VM's metadata in libvirt says. A broker that starts again keeps
// only VMs recorded clean; everything else it finds is destroyed.
const (
	recBooting = "booting"
	recClean   = "clean"
	recOffered = "offered"
	recInUse   = "in-use"
	recEnding  = "ending"
)

// Recorded is the state as libvirt's metadata records it, and as `status`
// counts it: booting, clean, offered, in-use or ending.
func (s State) Recorded() string {
	switch s {
	case Clean:
		return recClean
	case Offered:
		return recOffered
	case Linking, InUse:
		return recInUse
	case Destroying, Deleting, Gone:
		return recEnding
	}
	return recBooting // creating, cancelled, booting, readying, adopting
}

// preparing reports whether a VM in s is on its way to clean: such VMs
// count against refill_concurrency and, until clean, as memory taken.
func (s State) preparing() bool {
	return s == Creating || s == Booting || s == Readying || s == Adopting
}

// ending reports whether a VM in s is being wiped.
func (s State) ending() bool { return s == Cancelled || s == Destroying || s == Deleting }
