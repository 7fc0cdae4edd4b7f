package xdp

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The control loop reads each service's counters and renews the control
// block at every step (ten times a second, once a second while quiet).
// cilium/ebpf announces its system calls to the Go scheduler, and on a
// quiet gateway the first announced call after a wake-up wakes sysmon,
// which then polls every 20 µs while the step runs and hands the P of any
// call longer than that to another thread:
// measured, more context switches than the tick's own work. These two
// element calls only copy memory and never block, so they are raw system
// calls instead, like the queue's (nfq/doc.go), and so are the engine's
// calls on the tc programs' record of a flow they completed
// (ForgetReplayed, ReplayedEndings, ForgetEnded, ReplayedPending), one or
// more per legitimate handshake. Everything else goes through cilium/ebpf.

// bpf(2) commands (include/uapi/linux/bpf.h).
const (
	bpfMapLookupElem          = 1
	bpfMapUpdateElem          = 2
	bpfMapDeleteElem          = 3
	bpfMapLookupAndDeleteElem = 21
)

// elemAttr is union bpf_attr for the element commands.
type elemAttr struct {
	mapFD uint32
	_     uint32
	key   uint64
	value uint64 // or next_key
	flags uint64
}

// tickCalls holds, on the heap where the kernel may be given their
// addresses, the arguments of the control loop's element calls.
type tickCalls struct {
	mu       sync.Mutex
	attr     elemAttr
	key      uint32
	counters []synguardSvcCounters // one per possible CPU
	control  synguardEngineControl
}

func newTickCalls() (*tickCalls, error) {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("xdp: possible CPUs: %w", err)
	}
	return &tickCalls{counters: make([]synguardSvcCounters, n)}, nil
}

// elem runs one element command on m with c.key and value, with c.mu held.
func (c *tickCalls) elem(cmd uintptr, m *ebpf.Map, value unsafe.Pointer, flags uint64) error {
	return rawElem(&c.attr, cmd, m, unsafe.Pointer(&c.key), value, flags)
}

// rawElem runs one element command on m through attr. attr, key and value
// must be on the heap: the kernel is given their addresses.
func rawElem(attr *elemAttr, cmd uintptr, m *ebpf.Map, key, value unsafe.Pointer, flags uint64) error {
	*attr = elemAttr{
		mapFD: uint32(m.FD()),
		key:   uint64(uintptr(key)),
		value: uint64(uintptr(value)),
		flags: flags,
	}
	_, _, e := unix.RawSyscall(unix.SYS_BPF, cmd, uintptr(unsafe.Pointer(attr)), unsafe.Sizeof(*attr))
	if e != 0 {
		return e
	}
	return nil
}

// forgetCall holds, on the heap, the arguments of the calls on the
// replay_flows map.
type forgetCall struct {
	mu    sync.Mutex
	attr  elemAttr
	key   synguardFlow
	value synguardReplayFlow
}

// lookupAndDelete takes m's element k out, with c.mu held; c.value then
// holds it.
func (c *forgetCall) lookupAndDelete(m *ebpf.Map, k synguardFlow) error {
	c.key = k
	return rawElem(&c.attr, bpfMapLookupAndDeleteElem, m, unsafe.Pointer(&c.key), unsafe.Pointer(&c.value), 0)
}

// lookup reads m's element k into c.value, with c.mu held.
func (c *forgetCall) lookup(m *ebpf.Map, k synguardFlow) error {
	c.key = k
	return rawElem(&c.attr, bpfMapLookupElem, m, unsafe.Pointer(&c.key), unsafe.Pointer(&c.value), 0)
}

// insert adds c.value as m's element c.key unless there is one, with
// c.mu held.
func (c *forgetCall) insert(m *ebpf.Map) error {
	return rawElem(&c.attr, bpfMapUpdateElem, m, unsafe.Pointer(&c.key), unsafe.Pointer(&c.value), uint64(ebpf.UpdateNoExist))
}

// delete deletes m's element c.key, with c.mu held.
func (c *forgetCall) delete(m *ebpf.Map) error {
	return rawElem(&c.attr, bpfMapDeleteElem, m, unsafe.Pointer(&c.key), nil, 0)
}

// lookupCounters reads service i's per-CPU counters into c.counters, with
// c.mu held.
func (c *tickCalls) lookupCounters(m *ebpf.Map, i int) error {
	c.key = uint32(i)
	return c.elem(bpfMapLookupElem, m, unsafe.Pointer(&c.counters[0]), 0)
}

// putControl writes ctl as the control block, with c.mu held.
func (c *tickCalls) putControl(m *ebpf.Map, ctl synguardEngineControl) error {
	c.key = 0
	c.control = ctl
	return c.elem(bpfMapUpdateElem, m, unsafe.Pointer(&c.control), uint64(ebpf.UpdateAny))
}

// clockNow reads clock id without announcing the call (see above); the
// vDSO's clocks do not include TAI on every kernel.
func clockNow(id int32) (int64, error) {
	var ts unix.Timespec
	_, _, e := unix.RawSyscall(unix.SYS_CLOCK_GETTIME, uintptr(id), uintptr(unsafe.Pointer(&ts)), 0)
	if e != 0 {
		return 0, e
	}
	return ts.Nano(), nil
}
