package main

import (
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/synguard/synguard/internal/syncbuf"
)

func TestSecondSignalExitsAtOnce(t *testing.T) {
	sigs := make(chan os.Signal, 2)
	cancelled := make(chan struct{})
	exited := make(chan int, 1)
	var stderr syncbuf.Buffer
	go stopOnSignals(sigs, func() { close(cancelled) }, &stderr, func(code int) { exited <- code })

	sigs <- syscall.SIGTERM
	<-cancelled
	select {
	case code := <-exited:
		t.Fatalf("exited (%d) at the first signal, before its cleanup", code)
	default:
	}
	sigs <- syscall.SIGINT
	if code := <-exited; code != exitInterrupted {
		t.Errorf("exit status %d after the second signal, want %d", code, exitInterrupted)
	}
	if !strings.Contains(stderr.String(), "interrupt after terminated") {
		t.Errorf("stderr %q does not say which signals", stderr.String())
	}
}
