package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// clockTick is the unit of /proc/stat and /proc/PID/stat: USER_HZ, which
// Linux fixes at 100 for userspace on every architecture it exports these
// files on, whatever the kernel's internal HZ.
const clockTick = 10 * time.Millisecond

// CPUTimes is the whole machine's CPU time so far, summed over all CPUs,
// from the "cpu" line of /proc/stat. Every network namespace shares the
// one kernel, so this includes the flood generator, the gateway, the
// backend and the softirq work between them.
type CPUTimes struct {
	// Busy is user + nice + system + irq + softirq + steal. (guest time
	// is already inside user and nice.)
	Busy time.Duration
	// Idle is idle + iowait.
	Idle time.Duration
}

// Sub returns c - old.
func (c CPUTimes) Sub(old CPUTimes) CPUTimes {
	return CPUTimes{Busy: c.Busy - old.Busy, Idle: c.Idle - old.Idle}
}

// ReadCPUTimes reads /proc/stat.
func ReadCPUTimes() (CPUTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, fmt.Errorf("cpu times: %w", err)
	}
	return ParseProcStat(bytes.NewReader(b))
}

// ParseProcStat reads the aggregate "cpu" line of /proc/stat:
//
//	cpu  user nice system idle iowait irq softirq steal guest guest_nice
//
// in USER_HZ ticks. Kernels before 2.6.11 printed fewer columns; the
// missing ones count as 0.
func ParseProcStat(r io.Reader) (CPUTimes, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		if len(f) < 5 {
			return CPUTimes{}, fmt.Errorf("/proc/stat: short cpu line %q", sc.Text())
		}
		var v [8]uint64
		for i := range v {
			if i+1 >= len(f) {
				break
			}
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return CPUTimes{}, fmt.Errorf("/proc/stat: cpu column %d: %w", i+1, err)
			}
			v[i] = n
		}
		user, nice, system, idle, iowait, irq, softirq, steal := v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
		return CPUTimes{
			Busy: ticks(user + nice + system + irq + softirq + steal),
			Idle: ticks(idle + iowait),
		}, nil
	}
	if err := sc.Err(); err != nil {
		return CPUTimes{}, fmt.Errorf("/proc/stat: %w", err)
	}
	return CPUTimes{}, errors.New("/proc/stat: no cpu line")
}

func ticks(n uint64) time.Duration { return time.Duration(n) * clockTick }

// ProcessCPU returns the CPU time process pid has used: its threads' run
// time to the nanosecond where the kernel keeps scheduler statistics
// (RunTime), else user + system time from /proc/PID/stat.
func ProcessCPU(pid int) (time.Duration, error) {
	if schedstats() {
		d, err := RunTime(pid)
		if err != nil {
			return 0, fmt.Errorf("process cpu: %w", err)
		}
		return d, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("process cpu: %w", err)
	}
	return ParseProcessStat(b)
}

// RunTime returns how long the threads of process pid have run so far, to
// the nanosecond: the sum of the first field of each
// /proc/PID/task/TID/schedstat, the time the thread's own CPU clock reads
// (the flood thread's measure), softirq work done in its context
// included. /proc/PID/stat counts the same time in 10 ms ticks, which over
// a 10 s run at 10k packets a second is 1 µs a packet a tick. A thread
// that ends meanwhile takes its time with it, as the Go runtime's threads
// rarely do.
func RunTime(pid int) (time.Duration, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("run time of %d: %w", pid, err)
	}
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread ended meanwhile
		}
		d, err := ParseSchedstat(b)
		if err != nil {
			return 0, fmt.Errorf("run time of %d: %w", pid, err)
		}
		sum += d
	}
	return sum, nil
}

// ParseSchedstat reads the time on the CPU, in nanoseconds, from the text
// of /proc/PID/schedstat: "run_ns wait_ns timeslices".
func ParseSchedstat(b []byte) (time.Duration, error) {
	f := bytes.Fields(b)
	if len(f) != 3 {
		return 0, fmt.Errorf("schedstat %q: want 3 fields", b)
	}
	ns, err := strconv.ParseInt(string(f[0]), 10, 64)
	if err != nil || ns < 0 {
		return 0, fmt.Errorf("schedstat %q: run time not a count of nanoseconds", b)
	}
	return time.Duration(ns), nil
}

// schedstats says the kernel keeps the per-thread run time RunTime reads
// (CONFIG_SCHED_INFO).
var schedstats = sync.OnceValue(func() bool {
	_, err := os.Stat("/proc/self/schedstat")
	return err == nil
})

// ParseProcessStat reads utime and stime (fields 14 and 15) from the text
// of /proc/PID/stat. The command name (field 2) is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the
// last ')'.
func ParseProcessStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("/proc/PID/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/PID/stat: %d fields after the name, want at least 13", len(f))
	}
	var sum uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/PID/stat: %w", err)
		}
		sum += n
	}
	return ticks(sum), nil
}

// PeakRSS returns the process's peak resident set size (VmHWM) in bytes.
func PeakRSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("peak rss: %w", err)
	}
	return ParseVmHWM(b)
}

// ParseVmHWM reads the "VmHWM: N kB" line of /proc/PID/status, in bytes.
func ParseVmHWM(b []byte) (uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("/proc/PID/status: bad VmHWM line %q", sc.Text())
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/PID/status: VmHWM: %w", err)
		}
		return kb << 10, nil
	}
	return 0, errors.New("/proc/PID/status: no VmHWM line")
}

// CPUPerSYN is the extra CPU time one offered SYN cost a system, in
// microseconds, against a baseline run at the same offered load in which
// the gateway dropped the flood at its first hook.
//
// busy and sent are the run's whole-machine busy CPU time and SYNs sent;
// baseBusy and baseSent the baseline's. The generator's own work, the
// veth hop to the gateway and whatever else the machine was doing are in
// both and cancel out. The baseline's cost is scaled per SYN, because at
// "as fast as possible" the two runs do not send exactly as many SYNs:
//
//	busy/sent − baseBusy/baseSent
//
// which equals (busy − baseBusy)/sent when the counts match. The result
// can come out slightly negative at low rates, where the difference is
// within the noise of the tick-based counters; it is reported as it is.
func CPUPerSYN(busy time.Duration, sent int, baseBusy time.Duration, baseSent int) float64 {
	if sent <= 0 || baseSent <= 0 {
		return 0
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return us(busy)/float64(sent) - us(baseBusy)/float64(baseSent)
}

// procSample is one process's CPU time so far, and its start time to tell
// a reused PID apart.
type procSample struct {
	start uint64        // field 22, clock ticks after boot
	cpu   time.Duration // RunTime for ours but self (where the kernel has it), else utime + stime
	ours  bool          // part of the benchmark (see sampleProcesses)
	self  bool          // this process
}

// sampleProcesses reads the CPU time of every process and thread group,
// and classes each as the benchmark's own or someone else's. The
// benchmark's own are this process (the generator, the legitimate
// clients and the backend run in it; marked self, since the measure
// counts only its flood thread), every process in one of the lab's
// network namespaces (given by the inodes of their namespace files: the
// synguard gateway) and the kernel threads (ksoftirqd and the kworkers
// do the flood's deferred work). Every other user process is someone
// else's work on a shared machine.
//
// Softirq work is charged, tick by tick, to whichever task it
// interrupted. The flood's is almost all raised and run in the benchmark's
// own processes: veth delivers in the sender's context, and synguard's
// sends and verdicts are its own system calls.
//
// Reaped children's time (cutime, cstime) is left out: it arrives all at
// once when a child exits, including whatever the child ran before the
// window.
func sampleProcesses(labNS map[uint64]bool) (map[int]procSample, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("sample processes: %w", err)
	}
	self := os.Getpid()
	out := make(map[int]procSample, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone meanwhile
		}
		s, kthread, err := parseProcSample(b)
		if err != nil {
			continue
		}
		s.self = pid == self
		s.ours = s.self || kthread
		if !s.ours {
			var st unix.Stat_t
			if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
				continue
			}
			s.ours = labNS[st.Ino]
		}
		if s.ours && !s.self && schedstats() {
			// What the measure counts, to the nanosecond: the lab's
			// processes and the kernel threads are a few ticks each at
			// low rates.
			if s.cpu, err = RunTime(pid); err != nil {
				continue // gone meanwhile
			}
		}
		out[pid] = s
	}
	return out, nil
}

// pfKthread is the kernel's PF_KTHREAD task flag (field 9 of
// /proc/PID/stat).
const pfKthread = 0x00200000

// parseProcSample reads flags, utime, stime and starttime from
// /proc/PID/stat.
func parseProcSample(b []byte) (procSample, bool, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procSample{}, false, errors.New("/proc/PID/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return procSample{}, false, fmt.Errorf("/proc/PID/stat: %d fields after the name", len(f))
	}
	var err error
	field := func(n int) uint64 { // n is the 1-based field number
		v, e := strconv.ParseUint(f[n-3], 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("/proc/PID/stat: field %d: %w", n, e)
		}
		return v
	}
	s := procSample{
		start: field(22),
		cpu:   ticks(field(14) + field(15)),
	}
	kthread := field(9)&pfKthread != 0
	return s, kthread, err
}

// processCPU is the CPU time the processes in end used since start,
// split into this process's, the rest of the benchmark's and everyone
// else's: the difference for processes present in both samples,
// everything for those started in between. A process that both starts
// and ends between the samples is in neither.
func processCPU(start, end map[int]procSample) (self, ours, others time.Duration) {
	for pid, e := range end {
		d := e.cpu
		if s, ok := start[pid]; ok && s.start == e.start {
			d = max(e.cpu-s.cpu, 0)
		}
		switch {
		case e.self:
			self += d
		case e.ours:
			ours += d
		default:
			others += d
		}
	}
	return self, ours, others
}

// threadCPU is the calling thread's CPU time so far, to the nanosecond.
// It includes the softirq work the kernel ran in the thread's context
// (this kernel does not account interrupt time apart).
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// ReadBacklogDrops sums, over all CPUs, the packets the kernel dropped
// because a CPU's input backlog (net.core.netdev_max_backlog) was full:
// the second column of /proc/net/softnet_stat. veth delivers into that
// backlog, so this is where a lab link overflows. The counter is the
// whole machine's, not a namespace's.
func ReadBacklogDrops() (uint64, error) {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0, fmt.Errorf("backlog drops: %w", err)
	}
	return ParseSoftnetDrops(bytes.NewReader(b))
}

// ParseSoftnetDrops reads /proc/net/softnet_stat: one line per CPU of
// hexadecimal columns, processed, dropped, time_squeeze, ...
func ParseSoftnetDrops(r io.Reader) (uint64, error) {
	var sum uint64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 2 {
			return 0, fmt.Errorf("softnet_stat: short line %q", sc.Text())
		}
		v, err := strconv.ParseUint(f[1], 16, 32)
		if err != nil {
			return 0, fmt.Errorf("softnet_stat: %w", err)
		}
		sum += v
	}
	return sum, sc.Err()
}
