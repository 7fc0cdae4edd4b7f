package xdp

// The BPF object and its Go bindings are committed, so building synguard
// needs no clang; `go generate ./xdp` rebuilds them from synguard.c with
// Debian's clang and libbpf-dev, and CI checks that the committed object
// is what the source builds to.
//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror -fno-strict-aliasing -fdebug-prefix-map=${PWD}=. -I/usr/include/x86_64-linux-gnu" -type svc_key -type svc_val -type engine_control -type svc_counters -type action_counts -type src_key -type hs_event -type replay_flow -type flow synguard synguard.c
