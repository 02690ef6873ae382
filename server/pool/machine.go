package pool

import (
	"errors"
	"fmt"
	"time"

	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// Every transition of a VM is in this file. next is a pure function: it
// takes what the pool knows of one VM and one input — a libvirt event, an
// API call, the result of an action, a timer — and returns what the pool
// knows now and the actions to take. It does no I/O and reads no clock.
// The pool's loop (loop.go) feeds it inputs one at a time and hands the
// actions to the executor (exec.go), whose results come back as inputs.
//
//	creating -> booting -> readying -> clean -> offered -> linking -> in-use -> destroying -> deleting -> gone
//	creating -> cancelled -> destroying             (ended before the creation returned)
//	adopting -> clean                               (a clean VM of an earlier run, checked again)
//	offered  -> clean                               (never linked: still pristine)
//	any other state -> destroying                   (stopped, failed, not ready in time, ended)

// inputKind says what happened to a VM.
type inputKind uint8

const (
	// From libvirt (or a listing that shows what an event would have).
	evAgentUp   inputKind = iota + 1
	evAgentDown           //
	evStopped             // the domain stopped or vanished; detail is libvirt's word for why
	// From callers of the pool's API, and from the pool's own refill logic.
	apiTake     // claim: who it is offered to
	apiMarkUsed // a client links for the first time
	apiRelease  // the offer ended unlinked
	apiEnd      // detail: why (session over, an admin)
	apiRetire   // detail: why (surplus, an older version); only clean VMs are retired
	// Results of actions.
	resCreated       // dom, spice, paths
	resCreateFailed  // err, paths made before the failure
	resReady         //
	resReadyFailed   // err
	resRecorded      // rec: the state written
	resRecordFailed  // rec, err
	resDestroyed     //
	resDestroyFailed // err
	resDeleted       //
	resDeleteFailed  // err
	// Timers; the loop drops those that were stopped or re-armed meanwhile.
	tmDeadline // the VM was not ready in time
	tmRetry    // retry the step that failed
)

// InputKinds lists every input kind, for tables and tests.
var inputKinds = []inputKind{evAgentUp, evAgentDown, evStopped, apiTake, apiMarkUsed, apiRelease, apiEnd, apiRetire,
	resCreated, resCreateFailed, resReady, resReadyFailed, resRecorded, resRecordFailed, resDestroyed, resDestroyFailed,
	resDeleted, resDeleteFailed, tmDeadline, tmRetry}

var inputNames = map[inputKind]string{
	evAgentUp: "agent-up", evAgentDown: "agent-down", evStopped: "stopped",
	apiTake: "take", apiMarkUsed: "mark-used", apiRelease: "release", apiEnd: "end", apiRetire: "retire",
	resCreated: "created", resCreateFailed: "create-failed", resReady: "ready", resReadyFailed: "ready-failed",
	resRecorded: "recorded", resRecordFailed: "record-failed", resDestroyed: "destroyed", resDestroyFailed: "destroy-failed",
	resDeleted: "deleted", resDeleteFailed: "delete-failed", tmDeadline: "deadline", tmRetry: "retry",
}

func (k inputKind) String() string {
	if n, ok := inputNames[k]; ok {
		return n
	}
	return fmt.Sprintf("input(%d)", uint8(k))
}

// input is one thing that happened to a VM.
type input struct {
	kind   inputKind
	vm     string
	at     time.Time
	detail string         // evStopped: libvirt's reason; apiEnd, apiRetire: why
	err    error          // the *Failed results
	rec    string         // resRecorded, resRecordFailed: the recorded state that was written
	dom    *domxml.Domain // resCreated
	spice  SpiceTarget    // resCreated
	paths  []string       // resCreated, resCreateFailed: the overlays made
	claim  Claim          // apiTake
	// shelved: an apiTake of a VM a Take took from the shelf, already off
	// it (shelf.go).
	shelved bool
	gen     uint64 // timers: which arming fired
}

// actionKind says what to do.
type actionKind uint8

const (
	doCreate      actionKind = iota + 1 // make the overlays, define and start the domain
	doReady                             // ping the guest agent (if any), probe the display, record clean
	doRecord                            // write the VM's metadata, with rec as its state
	doDestroy                           // destroy and undefine the domain
	doDelete                            // delete the overlays and verify they are gone
	cancelPending                       // stop the VM's running check or record, drop what waits behind it
	armDeadline                         // the ready deadline starts
	stopDeadline                        //
	armRetry                            // retry the failed step after the given delay
	countFailure                        // a clone failed (err): back off, maybe report the pool degraded
	countSuccess                        // a clone became clean: the failure streak is over
	answerLinked                        // answer the callers of MarkUsed with err
	announceClean                       // a VM became clean: wake whoever waits for one
	announceEnded                       // the VM and its disk are gone: tell the sessions
)

var actionNames = map[actionKind]string{
	doCreate: "create", doReady: "ready", doRecord: "record", doDestroy: "destroy", doDelete: "delete",
	cancelPending: "cancel-pending",
	armDeadline:   "arm-deadline", stopDeadline: "stop-deadline", armRetry: "arm-retry",
	countFailure: "count-failure", countSuccess: "count-success", answerLinked: "answer-linked",
	announceClean: "announce-clean", announceEnded: "announce-ended",
}

func (k actionKind) String() string { return actionNames[k] }

type action struct {
	kind  actionKind
	rec   string        // doRecord
	err   error         // countFailure, answerLinked
	after time.Duration // armRetry
}

func (a action) String() string {
	switch {
	case a.kind == doRecord:
		return "record(" + a.rec + ")"
	case a.kind == armRetry:
		return fmt.Sprintf("arm-retry(%v)", a.after)
	case a.err != nil:
		return fmt.Sprintf("%s(%v)", a.kind, a.err)
	}
	return a.kind.String()
}

// vm is what the pool knows of one VM. The loop owns it; next returns a
// changed copy.
type vm struct {
	name     string
	state    State
	since    time.Time // entered state
	version  int       // the published version it is a linked clone of
	hasAgent bool      // that version's golden has a guest agent channel
	agent    bool      // libvirt last reported the guest agent connected
	spice    SpiceTarget
	overlays []string
	slot     int       // its address on the guest network; -1: none
	claim    Claim     // who it is offered to
	linked   time.Time // a client's first link
	reason   string    // why it is ending
	restart  bool      // found in a session's state at start: a broker restart ended it
	tries    int       // failed attempts of the current step, for the backoff
	lastErr  string    // the last failed attempt, for status
	born     time.Time // made by this broker (zero if found at start), for the metrics
	wiping   time.Time // entered destroying, for the metrics
}

// rules are the settings next needs.
type rules struct {
	readyTimeout       time.Duration
	minRetry, maxRetry time.Duration // backoff of a failed wipe step
}

// Errors of next. Impossible inputs are bugs of the caller: the loop logs
// them. Callers of the API get ErrNotOffered.
var errImpossible = errors.New("impossible input")

// errTaken is apply's answer to the loop's own take or retire of a clean VM
// that a Take took from the shelf meanwhile (shelf.go).
var errTaken = errors.New("taken from the shelf meanwhile")

// ReasonRestart is why a VM found in a session's state at start ends.
const ReasonRestart = "ended by a broker restart"

// next applies one input to a VM. An input the state cannot take is
// refused: the VM is returned unchanged with an error, never half-applied.
func (r rules) next(v vm, in input) (vm, []action, error) {
	switch in.kind {
	case evAgentUp:
		v.agent = true
	case evAgentDown:
		v.agent = false
	}
	switch v.state {
	case Creating:
		return r.creating(v, in)
	case Cancelled:
		return r.cancelled(v, in)
	case Booting:
		return r.booting(v, in)
	case Readying:
		return r.readying(v, in)
	case Adopting:
		return r.adopting(v, in)
	case Clean:
		return r.clean(v, in)
	case Offered:
		return r.offered(v, in)
	case Linking:
		return r.linking(v, in)
	case InUse:
		return r.inUse(v, in)
	case Destroying:
		return r.destroying(v, in)
	case Deleting:
		return r.deleting(v, in)
	}
	return refuse(v, in)
}

func (r rules) creating(v vm, in input) (vm, []action, error) {
	switch in.kind {
	case resCreated:
		v.overlays, v.spice = in.paths, in.spice
		v.agent = v.agent || in.dom.AgentState == "connected"
		if !v.hasAgent || v.agent {
			return enter(v, Readying, in), []action{{kind: armDeadline}, {kind: doReady}}, nil
		}
		return enter(v, Booting, in), []action{{kind: armDeadline}}, nil
	case resCreateFailed:
		v.overlays = in.paths
		if virt.IsDisconnected(in.err) {
			return enter(v, Gone, in), nil, nil // what it left is the reconcile's, once libvirt is back
		}
		return r.fail(v, in, in.err)
	case evStopped:
		v.reason = "stopped while booting (" + in.detail + ")"
		return enter(v, Cancelled, in), []action{{kind: countFailure, err: errors.New(v.reason)}}, nil
	case apiEnd:
		v.reason = in.detail
		return enter(v, Cancelled, in), nil, nil
	case evAgentUp, evAgentDown:
		return v, nil, nil
	}
	return refuse(v, in)
}

// cancelled waits for the creation to return: wiping before it did could
// leave a domain defined after its destruction.
func (r rules) cancelled(v vm, in input) (vm, []action, error) {
	switch in.kind {
	case resCreated, resCreateFailed:
		v.overlays = in.paths
		if in.kind == resCreated {
			v.spice = in.spice
		} else if virt.IsDisconnected(in.err) {
			return enter(v, Gone, in), nil, nil
		}
		return r.end(v, in, v.reason)
	case evStopped, apiEnd, evAgentUp, evAgentDown:
		return v, nil, nil
	}
	return refuse(v, in)
}

// bootEnds handles what ends a clone on its way to clean, booting or
// readying alike: its domain stops, the deadline passes, it is ended.
func (r rules) bootEnds(v vm, in input) (vm, []action, bool) {
	var nv vm
	var acts []action
	switch in.kind {
	case evStopped:
		nv, acts, _ = r.fail(v, in, fmt.Errorf("stopped while booting (%s)", in.detail))
	case tmDeadline:
		nv, acts, _ = r.fail(v, in, fmt.Errorf("not ready within %v (guest agent never answered guest-ping)", r.readyTimeout))
	case apiEnd:
		nv, acts, _ = r.end(v, in, in.detail)
	default:
		return v, nil, false
	}
	return nv, acts, true
}

func (r rules) booting(v vm, in input) (vm, []action, error) {
	if nv, acts, ok := r.bootEnds(v, in); ok {
		return nv, acts, nil
	}
	switch in.kind {
	case evAgentUp:
		return enter(v, Readying, in), []action{{kind: doReady}}, nil
	case resReady: // an earlier check, from before the agent went away and came back
		return r.becomeClean(v, in)
	case evAgentDown, resReadyFailed:
		return v, nil, nil
	}
	return refuse(v, in)
}

func (r rules) readying(v vm, in input) (vm, []action, error) {
	if nv, acts, ok := r.bootEnds(v, in); ok {
		return nv, acts, nil
	}
	switch in.kind {
	case resReady:
		return r.becomeClean(v, in)
	case resReadyFailed:
		switch {
		case virt.IsDisconnected(in.err):
			v.tries++
			return v, []action{{kind: armRetry, after: r.backoff(v.tries)}}, nil
		case errors.Is(in.err, virt.ErrAgent):
			return enter(v, Booting, in), nil, nil // its next event, or the deadline, decides
		}
		return r.fail(v, in, fmt.Errorf("readiness check: %w", in.err))
	case tmRetry:
		return v, []action{{kind: doReady}}, nil
	case evAgentDown:
		return enter(v, Booting, in), nil, nil
	case evAgentUp:
		return v, nil, nil
	}
	return refuse(v, in)
}

// adopting checks a VM an earlier run left clean, as readying does, but a
// failure is no failed clone: the VM is simply not provably clean.
func (r rules) adopting(v vm, in input) (vm, []action, error) {
	switch in.kind {
	case resReady:
		return enter(v, Clean, in), []action{{kind: announceClean}}, nil
	case resReadyFailed:
		if virt.IsDisconnected(in.err) {
			return enter(v, Gone, in), nil, nil // the next start or reconnect looks again
		}
		return r.end(v, in, "left clean by an earlier run, but not provably clean: "+in.err.Error())
	case evStopped:
		return r.end(v, in, stopReason(in.detail))
	case apiEnd:
		return r.end(v, in, in.detail)
	case evAgentUp, evAgentDown:
		return v, nil, nil
	}
	return refuse(v, in)
}

func (r rules) clean(v vm, in input) (vm, []action, error) {
	switch in.kind {
	case apiTake:
		v.claim = in.claim
		return enter(v, Offered, in), []action{{kind: doRecord, rec: recOffered}}, nil
	case evAgentDown:
		return r.end(v, in, "guest agent went away while the VM was clean")
	case evStopped:
		return r.end(v, in, "stopped while clean ("+in.detail+")")
	case apiRetire, apiEnd:
		return r.end(v, in, in.detail)
	case evAgentUp, resReady, resReadyFailed, resRecorded, resRecordFailed:
		return v, nil, nil
	case apiMarkUsed, apiRelease:
		return notOffered(v, in)
	}
	return refuse(v, in)
}

func (r rules) offered(v vm, in input) (vm, []action, error) {
	switch in.kind {
	case apiMarkUsed:
		v.linked = in.at
		return enter(v, Linking, in), []action{{kind: doRecord, rec: recInUse}}, nil
	case apiRelease:
		v.claim = Claim{}
		return enter(v, Clean, in), []action{{kind: doRecord, rec: recClean}, {kind: announceClean}}, nil
	case evStopped:
		return r.end(v, in, stopReason(in.detail))
	case apiEnd:
		return r.end(v, in, in.detail)
	case evAgentUp, evAgentDown, resReady, resReadyFailed, resRecorded, resRecordFailed:
		return v, nil, nil
	}
	return refuse(v, in)
}

// linking waits for in-use to be in libvirt: only then may a client's bytes
// reach the VM, so that a crash can never leave a used VM that looks clean.
func (r rules) linking(v vm, in input) (vm, []action, error) {
	switch in.kind {
	case resRecorded:
		if in.rec != recInUse {
			return v, nil, nil // the offer's record, written before
		}
		return enter(v, InUse, in), []action{{kind: answerLinked}}, nil
	case resRecordFailed:
		if in.rec != recInUse {
			return v, nil, nil
		}
		err := fmt.Errorf("could not record first use: %w", in.err)
		return r.end(v, in, err.Error(), action{kind: answerLinked, err: err})
	case apiMarkUsed: // another channel of the same client: it waits with the first
		return v, nil, nil
	case evStopped:
		reason := stopReason(in.detail)
		return r.end(v, in, reason, action{kind: answerLinked, err: errors.New(reason)})
	case apiEnd:
		return r.end(v, in, in.detail, action{kind: answerLinked, err: errors.New(in.detail)})
	case evAgentUp, evAgentDown, resReady, resReadyFailed:
		return v, nil, nil
	case apiRelease:
		return notOffered(v, in)
	}
	return refuse(v, in)
}

func (r rules) inUse(v vm, in input) (vm, []action, error) {
	switch in.kind {
	case apiMarkUsed:
		return v, []action{{kind: answerLinked}}, nil
	case evStopped:
		return r.end(v, in, stopReason(in.detail))
	case apiEnd:
		return r.end(v, in, in.detail)
	case evAgentUp, evAgentDown, resReady, resReadyFailed, resRecorded, resRecordFailed:
		return v, nil, nil
	case apiRelease:
		return notOffered(v, in)
	}
	return refuse(v, in)
}

func (r rules) destroying(v vm, in input) (vm, []action, error) {
	return r.wiping(v, in, resDestroyed, resDestroyFailed, doDestroy, Deleting, action{kind: doDelete})
}

func (r rules) deleting(v vm, in input) (vm, []action, error) {
	return r.wiping(v, in, resDeleted, resDeleteFailed, doDelete, Gone, action{kind: announceEnded})
}

// wiping is a step of the wipe, destroying or deleting: the step's action
// is retried with backoff until it is done, then the next state is entered
// with its action. Nothing else moves a VM that is being wiped.
func (r rules) wiping(v vm, in input, done, failed inputKind, step actionKind, next State, then action) (vm, []action, error) {
	switch in.kind {
	case done:
		v.tries, v.lastErr = 0, ""
		return enter(v, next, in), []action{then}, nil
	case failed:
		v.tries++
		v.lastErr = in.err.Error()
		return v, []action{{kind: armRetry, after: r.backoff(v.tries)}}, nil
	case tmRetry:
		return v, []action{{kind: step}}, nil
	case evStopped, apiEnd, evAgentUp, evAgentDown, resReady, resReadyFailed, resRecorded, resRecordFailed:
		return v, nil, nil // it is ending already; stopping is what destroying does
	case apiMarkUsed, apiRelease:
		return notOffered(v, in)
	}
	return refuse(v, in)
}

// becomeClean ends a VM's boot: it is ready, and the failure streak is over.
func (r rules) becomeClean(v vm, in input) (vm, []action, error) {
	return enter(v, Clean, in), []action{{kind: stopDeadline}, {kind: countSuccess}, {kind: announceClean}}, nil
}

// fail counts a failed clone and wipes it.
func (r rules) fail(v vm, in input, err error) (vm, []action, error) {
	return r.end(v, in, "clone failed: "+err.Error(), action{kind: countFailure, err: err})
}

// end starts wiping a VM: destroy and undefine its domain, then delete its
// overlays. What the VM was doing is cancelled first (a wipe does not wait
// for a guest agent that does not answer). A VM that was offered records
// why it ends, for the audit line a restart would write.
func (r rules) end(v vm, in input, reason string, first ...action) (vm, []action, error) {
	acts := first
	if v.state == Booting || v.state == Readying {
		acts = append(acts, action{kind: stopDeadline})
	}
	if v.state != Cancelled {
		acts = append(acts, action{kind: cancelPending})
	}
	v = enter(v, Destroying, in)
	v.reason, v.tries, v.lastErr = reason, 0, ""
	if v.claim.Lease != "" {
		acts = append(acts, action{kind: doRecord, rec: recEnding})
	}
	return v, append(acts, action{kind: doDestroy}), nil
}

func (r rules) backoff(tries int) time.Duration {
	d := r.minRetry << min(max(tries-1, 0), 16)
	if d > r.maxRetry || d <= 0 {
		return r.maxRetry
	}
	return d
}

func enter(v vm, s State, in input) vm {
	v.state, v.since = s, in.at
	return v
}

func refuse(v vm, in input) (vm, []action, error) {
	return v, nil, fmt.Errorf("%w: %s while %s", errImpossible, in.kind, v.state)
}

func notOffered(v vm, in input) (vm, []action, error) {
	return v, nil, fmt.Errorf("%w: %s is %s", ErrNotOffered, v.name, v.state)
}

// stopReason says why a session's VM stopped, from libvirt's word for it.
func stopReason(detail string) string {
	switch detail {
	case "shutdown":
		return "guest powered off or rebooted"
	case "crashed":
		return "guest crashed"
	case "destroyed":
		return "domain destroyed outside the broker"
	case "":
		return "domain disappeared"
	case "unknown":
		return "domain found stopped"
	}
	return "domain stopped (" + detail + ")"
}
