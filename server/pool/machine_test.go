package pool

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"undervdi/server/domxml"
	"undervdi/server/virt"
)

// transitions is every way a VM's state changes, and every input a state
// takes without changing: state, input, the state after, the actions. A
// pair that is not here must be refused. "record" shows the state written;
// errors carried by actions are checked in TestMachineDetails.
const transitions = `
creating   agent-up       creating
creating   agent-down     creating
creating   stopped        cancelled   count-failure
creating   end            cancelled
creating   created        booting     arm-deadline
creating   create-failed  destroying  count-failure cancel-pending destroy

cancelled  agent-up       cancelled
cancelled  agent-down     cancelled
cancelled  stopped        cancelled
cancelled  end            cancelled
cancelled  created        destroying  destroy
cancelled  create-failed  destroying  destroy

booting    agent-up       readying    ready
booting    agent-down     booting
booting    ready          clean       stop-deadline count-success announce-clean
booting    ready-failed   booting
booting    stopped        destroying  count-failure stop-deadline cancel-pending destroy
booting    deadline       destroying  count-failure stop-deadline cancel-pending destroy
booting    end            destroying  stop-deadline cancel-pending destroy

readying   agent-up       readying
readying   agent-down     booting
readying   ready          clean       stop-deadline count-success announce-clean
readying   ready-failed   destroying  count-failure stop-deadline cancel-pending destroy
readying   retry          readying    ready
readying   stopped        destroying  count-failure stop-deadline cancel-pending destroy
readying   deadline       destroying  count-failure stop-deadline cancel-pending destroy
readying   end            destroying  stop-deadline cancel-pending destroy

adopting   agent-up       adopting
adopting   agent-down     adopting
adopting   ready          clean       announce-clean
adopting   ready-failed   destroying  cancel-pending destroy
adopting   stopped        destroying  cancel-pending destroy
adopting   end            destroying  cancel-pending destroy

clean      agent-up       clean
clean      agent-down     destroying  cancel-pending destroy
clean      stopped        destroying  cancel-pending destroy
clean      take           offered     record(offered)
clean      mark-used      refused     not-offered
clean      release        refused     not-offered
clean      end            destroying  cancel-pending destroy
clean      retire         destroying  cancel-pending destroy
clean      ready          clean
clean      ready-failed   clean
clean      recorded       clean
clean      record-failed  clean

offered    agent-up       offered
offered    agent-down     offered
offered    stopped        destroying  cancel-pending record(ending) destroy
offered    mark-used      linking     record(in-use)
offered    release        clean       record(clean) announce-clean
offered    end            destroying  cancel-pending record(ending) destroy
offered    ready          offered
offered    ready-failed   offered
offered    recorded       offered
offered    record-failed  offered

linking    agent-up       linking
linking    agent-down     linking
linking    stopped        destroying  answer-linked cancel-pending record(ending) destroy
linking    mark-used      linking
linking    release        refused     not-offered
linking    end            destroying  answer-linked cancel-pending record(ending) destroy
linking    ready          linking
linking    ready-failed   linking
linking    recorded       in-use      answer-linked
linking    record-failed  destroying  answer-linked cancel-pending record(ending) destroy

in-use     agent-up       in-use
in-use     agent-down     in-use
in-use     stopped        destroying  cancel-pending record(ending) destroy
in-use     mark-used      in-use      answer-linked
in-use     release        refused     not-offered
in-use     end            destroying  cancel-pending record(ending) destroy
in-use     ready          in-use
in-use     ready-failed   in-use
in-use     recorded       in-use
in-use     record-failed  in-use

destroying agent-up       destroying
destroying agent-down     destroying
destroying stopped        destroying
destroying mark-used      refused     not-offered
destroying release        refused     not-offered
destroying end            destroying
destroying ready          destroying
destroying ready-failed   destroying
destroying recorded       destroying
destroying record-failed  destroying
destroying destroyed      deleting    delete
destroying destroy-failed destroying  arm-retry
destroying retry          destroying  destroy

deleting   agent-up       deleting
deleting   agent-down     deleting
deleting   stopped        deleting
deleting   mark-used      refused     not-offered
deleting   release        refused     not-offered
deleting   end            deleting
deleting   ready          deleting
deleting   ready-failed   deleting
deleting   recorded       deleting
deleting   record-failed  deleting
deleting   deleted        gone        announce-ended
deleting   delete-failed  deleting    arm-retry
deleting   retry          deleting    delete
`

var testRules = rules{readyTimeout: time.Minute, minRetry: 250 * time.Millisecond, maxRetry: 10 * time.Second}

var testClaim = Claim{Kiosk: "k1", Lease: "l-1", Addr: "169.254.24.10"}

// stateVM is a VM in state s, as the pool would have it there.
func stateVM(s State) vm {
	v := vm{name: "t-0a1b2c3d", state: s, version: 1, hasAgent: true, overlays: []string{"/ovl/t-0a1b2c3d-vda.qcow2"}}
	switch s {
	case Offered, Linking, InUse, Destroying, Deleting:
		v.claim = testClaim
	}
	return v
}

// sample is the usual input of kind k.
func sample(k inputKind) input {
	in := input{kind: k, vm: "t-0a1b2c3d", at: time.Unix(1000, 0)}
	switch k {
	case evStopped:
		in.detail = "shutdown"
	case apiTake:
		in.claim = testClaim
	case apiEnd:
		in.detail = "the visitor finished"
	case apiRetire:
		in.detail = "surplus"
	case resCreated:
		in.dom = &domxml.Domain{AgentState: "disconnected"}
		in.paths = []string{"/ovl/t-0a1b2c3d-vda.qcow2"}
	case resCreateFailed, resReadyFailed, resDestroyFailed, resDeleteFailed:
		in.err = errors.New("qemu exploded")
	case resRecorded:
		in.rec = recInUse
	case resRecordFailed:
		in.rec, in.err = recInUse, errors.New("libvirt said no")
	}
	return in
}

func actionList(acts []action) string {
	var out []string
	for _, a := range acts {
		if a.kind == doRecord {
			out = append(out, "record("+a.rec+")")
		} else {
			out = append(out, a.kind.String())
		}
	}
	return strings.Join(out, " ")
}

func inputKindNamed(name string) (inputKind, bool) {
	for _, k := range inputKinds {
		if k.String() == name {
			return k, true
		}
	}
	return 0, false
}

// TestTransitions checks every (state, input) pair against the table.
func TestTransitions(t *testing.T) {
	type key struct {
		s State
		k inputKind
	}
	want := map[key][]string{}
	for i, line := range strings.Split(transitions, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		k, ok := inputKindNamed(f[1])
		if len(f) < 3 || !ok {
			t.Fatalf("table line %d %q: want state, input, result", i, line)
		}
		if _, dup := want[key{State(f[0]), k}]; dup {
			t.Fatalf("table line %d: %s %s listed twice", i, f[0], f[1])
		}
		want[key{State(f[0]), k}] = f[2:]
	}
	for _, s := range States {
		if s == Gone {
			continue // off the table: no input reaches it
		}
		for _, k := range inputKinds {
			v, in := stateVM(s), sample(k)
			got, acts, err := testRules.next(v, in)
			w, listed := want[key{s, k}]
			switch {
			case !listed:
				if !errors.Is(err, errImpossible) {
					t.Errorf("%s + %s = %s [%s], %v; want it refused as impossible", s, k, got.state, actionList(acts), err)
				}
			case w[0] == "refused":
				if !errors.Is(err, ErrNotOffered) {
					t.Errorf("%s + %s = %s [%s], %v; want ErrNotOffered", s, k, got.state, actionList(acts), err)
				}
			default:
				if err != nil || string(got.state) != w[0] || actionList(acts) != strings.Join(w[1:], " ") {
					t.Errorf("%s + %s = %s [%s], %v; want %s [%s]", s, k, got.state, actionList(acts), err, w[0], strings.Join(w[1:], " "))
				}
			}
			if err != nil && (got.state != v.state || acts != nil) {
				t.Errorf("%s + %s refused, yet returned %s [%s]: a refusal changes nothing", s, k, got.state, actionList(acts))
			}
		}
	}
}

// TestShelfNoOps: an input that leaves a clean VM clean and asks for
// nothing leaves an offered one offered, asking for nothing: apply lets such
// an input reach a clean VM still on the shelf, where a Take may have
// claimed it already (pool.go, shelf.go).
func TestShelfNoOps(t *testing.T) {
	for _, k := range inputKinds {
		in := sample(k)
		got, acts, err := testRules.next(stateVM(Clean), in)
		if err != nil || got.state != Clean || len(acts) > 0 {
			continue
		}
		if got, acts, err := testRules.next(stateVM(Offered), in); err != nil || got.state != Offered || len(acts) > 0 {
			t.Errorf("offered + %s = %s [%s], %v; want it to stay offered, asking for nothing, as clean + %s does", k, got.state, actionList(acts), err, k)
		}
	}
}

// TestMachineDetails checks what the table does not show: inputs whose
// payload changes the way out, and what actions carry.
func TestMachineDetails(t *testing.T) {
	lost := fmt.Errorf("%w: connection reset", virt.ErrDisconnected)
	for _, tc := range []struct {
		name  string
		state State
		in    input
		check func(t *testing.T, v vm, acts []action)
	}{
		{"a creation cut short by a lost connection leaves the VM to the reconcile", Creating,
			input{kind: resCreateFailed, err: lost, paths: []string{"/ovl/a"}},
			func(t *testing.T, v vm, acts []action) {
				if v.state != Gone || acts != nil || v.overlays[0] != "/ovl/a" {
					t.Errorf("= %s [%s], want gone and nothing announced", v.state, actionList(acts))
				}
			}},
		{"a VM whose agent is up before the creation returns goes straight to readying", Creating,
			input{kind: resCreated, dom: &domxml.Domain{AgentState: "connected", SpiceSocket: "/s"}, spice: SpiceTarget{Socket: "/s", Password: "pw"}},
			func(t *testing.T, v vm, acts []action) {
				if v.state != Readying || actionList(acts) != "arm-deadline ready" || v.spice.Password != "pw" {
					t.Errorf("= %s [%s] %+v", v.state, actionList(acts), v.spice)
				}
			}},
		{"a readiness check cut short by a lost connection is retried", Readying,
			input{kind: resReadyFailed, err: lost},
			func(t *testing.T, v vm, acts []action) {
				if v.state != Readying || len(acts) != 1 || acts[0].kind != armRetry || acts[0].after != 250*time.Millisecond {
					t.Errorf("= %s [%v]", v.state, acts)
				}
			}},
		{"an agent that does not answer yet sends the VM back to waiting for it", Readying,
			input{kind: resReadyFailed, err: fmt.Errorf("%w: t: timeout", virt.ErrAgent)},
			func(t *testing.T, v vm, acts []action) {
				if v.state != Booting || acts != nil {
					t.Errorf("= %s [%s]", v.state, actionList(acts))
				}
			}},
		{"an adopted VM that cannot be checked for a lost connection is left for the next listing", Adopting,
			input{kind: resReadyFailed, err: lost},
			func(t *testing.T, v vm, acts []action) {
				if v.state != Gone || acts != nil {
					t.Errorf("= %s [%s]", v.state, actionList(acts))
				}
			}},
		{"the offer's own record does not complete a first link", Linking,
			input{kind: resRecorded, rec: recOffered},
			func(t *testing.T, v vm, acts []action) {
				if v.state != Linking || acts != nil {
					t.Errorf("= %s [%s]", v.state, actionList(acts))
				}
			}},
		{"nor does its failure end the session", Linking,
			input{kind: resRecordFailed, rec: recOffered, err: errors.New("x")},
			func(t *testing.T, v vm, acts []action) {
				if v.state != Linking || acts != nil {
					t.Errorf("= %s [%s]", v.state, actionList(acts))
				}
			}},
		{"a failed first-use record fails the link and says why", Linking,
			input{kind: resRecordFailed, rec: recInUse, err: errors.New("disk full")},
			func(t *testing.T, v vm, acts []action) {
				if acts[0].kind != answerLinked || acts[0].err == nil || !strings.Contains(v.reason, "could not record first use: disk full") {
					t.Errorf("= %s [%v] %q", v.state, acts, v.reason)
				}
			}},
		{"a power-off while linking fails the link", Linking,
			input{kind: evStopped, detail: "shutdown"},
			func(t *testing.T, v vm, acts []action) {
				if acts[0].kind != answerLinked || acts[0].err == nil || v.reason != "guest powered off or rebooted" {
					t.Errorf("= [%v] %q", acts, v.reason)
				}
			}},
		{"taking records the claim", Clean,
			input{kind: apiTake, claim: testClaim},
			func(t *testing.T, v vm, acts []action) {
				if v.claim != testClaim {
					t.Errorf("claim = %+v", v.claim)
				}
			}},
		{"a release forgets the claim", Offered,
			input{kind: apiRelease},
			func(t *testing.T, v vm, acts []action) {
				if v.claim != (Claim{}) {
					t.Errorf("claim after release = %+v", v.claim)
				}
			}},
		{"a mark-used records when the VM was first linked", Offered,
			input{kind: apiMarkUsed, at: time.Unix(2000, 0)},
			func(t *testing.T, v vm, acts []action) {
				if !v.linked.Equal(time.Unix(2000, 0)) {
					t.Errorf("linked = %v", v.linked)
				}
			}},
		{"a clone that never got ready says how long it had", Booting,
			input{kind: tmDeadline},
			func(t *testing.T, v vm, acts []action) {
				if !strings.Contains(v.reason, "not ready within 1m0s") || acts[0].err == nil {
					t.Errorf("reason = %q, acts %v", v.reason, acts)
				}
			}},
		{"a session ends with its reason", InUse,
			input{kind: apiEnd, detail: "idle for 5m0s"},
			func(t *testing.T, v vm, acts []action) {
				if v.reason != "idle for 5m0s" {
					t.Errorf("reason = %q", v.reason)
				}
			}},
		{"the guest's power-off is named", InUse,
			input{kind: evStopped, detail: "shutdown"},
			func(t *testing.T, v vm, acts []action) {
				if v.reason != "guest powered off or rebooted" {
					t.Errorf("reason = %q", v.reason)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := stateVM(tc.state)
			tc.in.vm = v.name
			got, acts, err := testRules.next(v, tc.in)
			if err != nil {
				t.Fatalf("next = %v", err)
			}
			tc.check(t, got, acts)
		})
	}
}

// TestRetryBacksOff: a wipe step that keeps failing is retried ever later,
// up to the cap.
func TestRetryBacksOff(t *testing.T) {
	v := stateVM(Destroying)
	var delays []time.Duration
	for range 8 {
		var acts []action
		v, acts, _ = testRules.next(v, sample(resDestroyFailed))
		delays = append(delays, acts[0].after)
	}
	want := "[250ms 500ms 1s 2s 4s 8s 10s 10s]"
	if fmt.Sprint(delays) != want {
		t.Errorf("retry delays = %v, want %s", delays, want)
	}
	if v.lastErr != "qemu exploded" {
		t.Errorf("lastErr = %q", v.lastErr)
	}
	v, _, _ = testRules.next(v, sample(resDestroyed))
	if v.tries != 0 || v.lastErr != "" {
		t.Errorf("after success tries %d lastErr %q, want both reset", v.tries, v.lastErr)
	}
}

// FuzzMachine feeds random inputs to a VM: next never panics, a refusal
// changes nothing, and a used VM never becomes clean or offered again.
func FuzzMachine(f *testing.F) {
	f.Add([]byte{4, 9, 11, 13})
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
	f.Fuzz(func(t *testing.T, script []byte) {
		v := stateVM(Creating)
		used := false
		for _, b := range script {
			if v.state == Gone {
				return
			}
			k := inputKinds[int(b)%len(inputKinds)]
			in := sample(k)
			if b >= 128 { // the other payloads that matter
				switch k {
				case resCreateFailed, resReadyFailed:
					in.err = virt.ErrDisconnected
				case resRecorded, resRecordFailed:
					in.rec = recOffered
				}
			}
			nv, acts, err := testRules.next(v, in)
			if err != nil {
				if nv.state != v.state || acts != nil {
					t.Fatalf("%s + %s refused but changed the VM", v.state, k)
				}
				continue
			}
			if nv.state == Linking || nv.state == InUse {
				used = true
			}
			if used && (nv.state == Clean || nv.state == Offered || nv.state == Readying) {
				t.Fatalf("a used VM went %s -> %s on %s", v.state, nv.state, k)
			}
			v = nv
		}
	})
}
