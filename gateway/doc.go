// Package gateway assembles a running synguard from its parts: the cookie
// jar, raw sockets, the conntrack table, the engine, one NFQUEUE per
// worker, the firewall rules, backend option learning and the metrics
// endpoint. Run goes through three steps and owns their order:
//
//   - open makes what needs no rules: keys, sockets, the conntrack table,
//     the engine and the queues, bound before the rules that feed them
//     are installed, so no packet meets a rule with nobody listening;
//   - install puts the firewall rules in place and learns the backends'
//     options;
//   - serve runs the parts (the engine's timers and hand-offs, a worker
//     per queue, telemetry, the metrics server, the backend learner, the
//     rules watch that puts back rules other tools removed) in
//     one errgroup until the caller stops it or one of them fails. On a
//     stop the rules go first, so the service is never left behind a
//     queue nobody reads, then every part stops; after a failure the
//     parts are already stopping while the rules come down. Either way
//     serve waits for every part before it returns.
//
// Under systemd (notify.go) it reports READY=1 once the rules are live,
// STOPPING=1 as it stops, and feeds the watchdog only while the packet
// path is healthy.
//
// Handed-off flows live in the kernel's conntrack table and outlive the
// process. docs/architecture.md, "Gateway lifecycle", has the details.
package gateway
