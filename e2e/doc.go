// Package e2e holds synguard's end-to-end tests: the real synguard binary
// running in network namespaces, with the kernel's netfilter, conntrack and
// TCP stacks and real HTTP peers on both sides. It contains no code of its
// own outside the tests.
package e2e
