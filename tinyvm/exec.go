package tinyvm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// Result is what one of the guest's tools printed: its JSON answer, or
// the error it gave.
type Result struct {
	Exit   int
	Out    map[string]any
	Err    string // the tool's "error", if it failed
	Stderr string
}

// Exec runs the guest's tool (tinyvm/guest/tool.go) with args in the running
// domain, through the guest agent's guest-exec, and waits for it to end.
func Exec(ctx context.Context, l *libvirt.Libvirt, domain string, args ...string) (*Result, error) {
	dom, err := l.DomainLookupByName(domain)
	if err != nil {
		return nil, err
	}
	cmd, _ := json.Marshal(map[string]any{"execute": "guest-exec",
		"arguments": map[string]any{"path": "/bin/guest", "arg": args, "capture-output": true}})
	out, err := l.QEMUDomainAgentCommand(dom, string(cmd), 10, 0)
	if err != nil {
		return nil, fmt.Errorf("guest-exec %v: %w", args, err)
	}
	var started struct {
		Return struct {
			PID int `json:"pid"`
		} `json:"return"`
	}
	if len(out) == 0 || json.Unmarshal([]byte(out[0]), &started) != nil {
		return nil, fmt.Errorf("guest-exec %v: answer %v", args, out)
	}
	status, _ := json.Marshal(map[string]any{"execute": "guest-exec-status", "arguments": map[string]int{"pid": started.Return.PID}})
	for {
		out, err := l.QEMUDomainAgentCommand(dom, string(status), 10, 0)
		if err != nil {
			return nil, fmt.Errorf("guest-exec-status %v: %w", args, err)
		}
		var st struct {
			Return struct {
				Exited   bool   `json:"exited"`
				ExitCode int    `json:"exitcode"`
				OutData  string `json:"out-data"`
				ErrData  string `json:"err-data"`
			} `json:"return"`
		}
		if len(out) == 0 || json.Unmarshal([]byte(out[0]), &st) != nil {
			return nil, fmt.Errorf("guest-exec-status %v: answer %v", args, out)
		}
		if st.Return.Exited {
			stdout, _ := base64.StdEncoding.DecodeString(st.Return.OutData)
			stderr, _ := base64.StdEncoding.DecodeString(st.Return.ErrData)
			r := &Result{Exit: st.Return.ExitCode, Stderr: string(stderr)}
			if err := json.Unmarshal(stdout, &r.Out); err != nil {
				return nil, fmt.Errorf("guest %v printed %q (stderr %q)", args, stdout, stderr)
			}
			r.Err, _ = r.Out["error"].(string)
			return r, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
