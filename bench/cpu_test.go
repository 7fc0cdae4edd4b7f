package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/synguard/synguard/internal/nstest"
	"github.com/synguard/synguard/internal/poll"
)

func TestParseProcStat(t *testing.T) {
	const stat = `cpu  85444 3 19682 195773 635 7 2753 135 11 0
cpu0 41923 0 9439 99337 95 0 1385 61 0 0
cpu1 43521 0 10242 96436 540 0 1367 74 0 0
intr 1234 5 6
ctxt 987654
`
	got, err := ParseProcStat(strings.NewReader(stat))
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal; guest (11) is inside user.
	wantBusy := time.Duration(85444+3+19682+7+2753+135) * 10 * time.Millisecond
	wantIdle := time.Duration(195773+635) * 10 * time.Millisecond
	if got.Busy != wantBusy || got.Idle != wantIdle {
		t.Errorf("got busy %v idle %v, want %v and %v", got.Busy, got.Idle, wantBusy, wantIdle)
	}
	// An old kernel's four columns.
	got, err = ParseProcStat(strings.NewReader("cpu 1 2 3 4\n"))
	if err != nil || got.Busy != 60*time.Millisecond || got.Idle != 40*time.Millisecond {
		t.Errorf("short line: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4\n", "cpu 1 2\n", "cpu 1 x 3 4\n"} {
		if _, err := ParseProcStat(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseProcStat(%q) accepted", bad)
		}
	}
	// The real file parses, and busy time only grows.
	a, err := ReadCPUTimes()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := ReadCPUTimes()
	if d := b.Sub(a); d.Busy < 0 || d.Idle < 0 {
		t.Errorf("cpu times went backwards: %+v", d)
	}
}

func TestParseProcessStat(t *testing.T) {
	// A command name with spaces and parentheses; utime 250, stime 50,
	// cutime 7, cstime 8 (children are not counted), flags PF_KTHREAD,
	// starttime 4242.
	line := "1234 (a (b) c) S 1 1234 1234 0 -1 2097216 100 0 0 0 250 50 7 8 20 0 3 0 4242 1000 200\n"
	got, err := ParseProcessStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if got != 3*time.Second {
		t.Errorf("process cpu %v, want 3s", got)
	}
	s, kthread, err := parseProcSample([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if s.cpu != 3*time.Second || s.start != 4242 || !kthread {
		t.Errorf("sample %+v kthread %v", s, kthread)
	}
	if _, _, err := parseProcSample([]byte("1 (x) S 1 2 3")); err == nil {
		t.Error("short stat line accepted")
	}
	if _, err := ParseProcessStat([]byte("no name here")); err == nil {
		t.Error("stat line without a name accepted")
	}
	// Our own process: it has run, and it is not a kernel thread.
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	if s, kthread, err := parseProcSample(b); err != nil || kthread || s.start == 0 {
		t.Errorf("own stat: %+v kthread %v err %v", s, kthread, err)
	}
}

func TestProcessCPU(t *testing.T) {
	sec := func(n int) time.Duration { return time.Duration(n) * time.Second }
	start := map[int]procSample{
		1:  {start: 10, cpu: sec(5), ours: false},
		2:  {start: 20, cpu: sec(1), ours: true},
		3:  {start: 30, cpu: sec(9), ours: false}, // exits
		4:  {start: 40, cpu: sec(2), ours: false}, // PID reused below
		99: {start: 50, cpu: sec(3), ours: true},
		7:  {start: 5, cpu: sec(10), ours: true, self: true},
	}
	end := map[int]procSample{
		7:  {start: 5, cpu: sec(18), ours: true, self: true}, // +8 self
		1:  {start: 10, cpu: sec(7), ours: false},            // +2 others
		2:  {start: 20, cpu: sec(4), ours: true},             // +3 ours
		4:  {start: 45, cpu: sec(1), ours: false},            // new process: +1 others
		5:  {start: 60, cpu: sec(6), ours: true},             // new: +6 ours
		99: {start: 50, cpu: sec(3), ours: true},             // +0
	}
	self, ours, others := processCPU(start, end)
	if self != sec(8) || ours != sec(9) || others != sec(3) {
		t.Errorf("self %v ours %v others %v, want 8s, 9s and 3s", self, ours, others)
	}
}

// threadCPU counts this thread's own work, not the process's: a busy
// loop on it shows, time spent by another goroutine's thread does not.
func TestThreadCPU(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0 := threadCPU()
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	busy := threadCPU() - t0
	if busy < 20*time.Millisecond || busy > time.Second {
		t.Fatalf("50 ms busy loop: thread CPU %v", busy)
	}
	t1 := threadCPU()
	done := make(chan struct{})
	go func() {
		for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
		}
		close(done)
	}()
	<-done
	if idle := threadCPU() - t1; idle > 20*time.Millisecond {
		t.Fatalf("thread CPU grew %v while another thread worked", idle)
	}
}

// sampleProcesses counts as the benchmark's own its process (as self),
// the kernel threads and every process in one of the lab's namespaces, and
// nobody else.
func TestSampleProcesses(t *testing.T) {
	procs, err := sampleProcesses(nil)
	if err != nil {
		t.Fatal(err)
	}
	self, ok := procs[os.Getpid()]
	if !ok || !self.ours || !self.self {
		t.Errorf("own process %+v (found %v), want it counted as ours and self", self, ok)
	}
	if kt, ok := procs[2]; ok && !kt.ours { // kthreadd
		t.Errorf("kthreadd is not counted as ours")
	}

	t.Run("lab namespaces", func(t *testing.T) {
		ns := nstest.New(t, "sgt-cpu")
		var labNS unix.Stat_t
		if err := unix.Stat(filepath.Join("/run/netns", ns.Name), &labNS); err != nil {
			t.Fatal(err)
		}
		start := func(cmd *exec.Cmd) int {
			t.Helper()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			return cmd.Process.Pid
		}
		inLab := start(ns.Command(context.Background(), "sleep", "60"))
		outside := start(exec.Command("sleep", "60"))
		// `ip netns exec` enters the namespace, then becomes sleep.
		poll.Must(t, 5*time.Second, "the process started in the lab namespace never entered it", func() bool {
			var st unix.Stat_t
			return unix.Stat(fmt.Sprintf("/proc/%d/ns/net", inLab), &st) == nil && st.Ino == labNS.Ino
		})
		procs, err := sampleProcesses(map[uint64]bool{labNS.Ino: true})
		if err != nil {
			t.Fatal(err)
		}
		if p, ok := procs[inLab]; !ok || !p.ours || p.self {
			t.Errorf("process in a lab namespace: %+v (found %v), want it ours, not self", p, ok)
		} else if schedstats() && (p.cpu <= 0 || p.cpu%clockTick == 0) {
			// Starting sleep takes well under a tick.
			t.Errorf("process in a lab namespace ran %v: want its run time to the nanosecond, not in ticks", p.cpu)
		}
		if p, ok := procs[outside]; !ok || p.ours || p.self {
			t.Errorf("process outside the lab: %+v (found %v), want it listed and not ours", p, ok)
		}
	})
}

func TestParseVmHWM(t *testing.T) {
	status := "Name:\tsynguard\nVmPeak:\t 1786868 kB\nVmHWM:\t   21504 kB\nVmRSS:\t   20000 kB\n"
	got, err := ParseVmHWM([]byte(status))
	if err != nil || got != 21504<<10 {
		t.Errorf("ParseVmHWM = %d, %v; want %d", got, err, 21504<<10)
	}
	for _, bad := range []string{"Name:\tx\n", "VmHWM:\t12 MB\n", "VmHWM:\tlots kB\n"} {
		if _, err := ParseVmHWM([]byte(bad)); err == nil {
			t.Errorf("ParseVmHWM(%q) accepted", bad)
		}
	}
	if n, err := PeakRSS(os.Getpid()); err != nil || n == 0 {
		t.Errorf("own peak RSS %d, %v", n, err)
	}
}

func TestCPUPerSYN(t *testing.T) {
	tests := []struct {
		name     string
		busy     time.Duration
		sent     int
		baseBusy time.Duration
		baseSent int
		want     float64
	}{
		// 3 s more for 1M SYNs: 3 µs each.
		{"same count", 5 * time.Second, 1_000_000, 2 * time.Second, 1_000_000, 3},
		// Baseline sent twice as many at 2 µs each; the run's 400k SYNs
		// cost 5 µs each in all: 3 µs beyond the baseline.
		{"scaled per SYN", 2 * time.Second, 400_000, 1600 * time.Millisecond, 800_000, 3},
		{"noise below baseline", 990 * time.Millisecond, 1_000_000, time.Second, 1_000_000, -0.01},
		{"nothing sent", time.Second, 0, time.Second, 10, 0},
		{"no baseline", time.Second, 10, time.Second, 0, 0},
	}
	for _, tt := range tests {
		got := CPUPerSYN(tt.busy, tt.sent, tt.baseBusy, tt.baseSent)
		if math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: CPUPerSYN = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParseSoftnetDrops(t *testing.T) {
	const stat = `021bf98b 000058c1 00000004 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
02a16388 00004377 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000
`
	got, err := ParseSoftnetDrops(strings.NewReader(stat))
	if err != nil || got != 0x58c1+0x4377 {
		t.Errorf("ParseSoftnetDrops = %d, %v; want %d", got, err, 0x58c1+0x4377)
	}
	if _, err := ParseSoftnetDrops(strings.NewReader("0001 zz\n")); err == nil {
		t.Error("bad hex accepted")
	}
	if _, err := ReadBacklogDrops(); err != nil {
		t.Error(err)
	}
}

func TestParseSchedstat(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"123456789 42 7\n", 123456789, true},
		{"0 0 0\n", 0, true},
		{"123 42\n", 0, false},
		{"-5 1 1\n", 0, false},
		{"x 1 1\n", 0, false},
		{"", 0, false},
	} {
		got, err := ParseSchedstat([]byte(tt.in))
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseSchedstat(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// RunTime counts every thread of a process, to the nanosecond: a busy
// loop on one thread shows in full, and it agrees with the tick count.
func TestRunTime(t *testing.T) {
	if !schedstats() {
		if os.Getenv("CI") != "" {
			t.Fatal("the kernel keeps no scheduler statistics (CONFIG_SCHED_INFO): the bench counts in ticks")
		}
		t.Skip("the kernel keeps no scheduler statistics (CONFIG_SCHED_INFO)")
	}
	pid := os.Getpid()
	r0, err := RunTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan time.Duration)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t0 := threadCPU()
		for end := time.Now().Add(60 * time.Millisecond); time.Now().Before(end); {
		}
		done <- threadCPU() - t0
	}()
	busy := <-done
	r1, err := RunTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if d := r1 - r0; d < busy || d > busy+time.Second {
		t.Errorf("run time grew %v over a thread's %v busy loop", d, busy)
	}
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	ticked, err := ParseProcessStat(b)
	if err != nil {
		t.Fatal(err)
	}
	if r2, _ := RunTime(pid); r2 < ticked-100*time.Millisecond || r2 > ticked+time.Second {
		t.Errorf("run time %v, /proc/self/stat %v: want them within a few ticks", r2, ticked)
	}
	if _, err := RunTime(-1); err == nil {
		t.Error("run time of no process: no error")
	}
}
