package screen

import "testing"

func TestXServerErrorLines(t *testing.T) {
	var l lastLines
	l.Write([]byte("X.Org X Server 1.21.1.7\n(EE) \n(EE) Fatal server error:\n(EE) Failed to activate virtual core keyboard: 2(EE) \n"))
	l.Write([]byte("(EE) Please also check the log file at \"/var/log/Xorg.0.log\" for additional information.\n(EE) Server terminated with error (1). Closing log file.\n"))
	if got, want := l.tail(), "Failed to activate virtual core keyboard: 2(EE)"; got != want {
		t.Errorf("tail() = %q, want %q", got, want)
	}
	var plain lastLines
	plain.Write([]byte("one\ntwo\nthree\nfour\nfive\n"))
	if got := plain.tail(); got != "two / three / four / five" {
		t.Errorf("tail() without (EE) lines = %q", got)
	}
}
