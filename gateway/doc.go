// Package gateway assembles a running synguard from its parts: the cookie
// jar, raw sockets, the conntrack table, the engine, one NFQUEUE per
// worker, the firewall rules, backend option learning and the metrics
// endpoint. It owns their order of start and stop:
//
//   - queues are bound before the rules that feed them are installed, so
//     no packet meets a rule with nobody listening;
//   - on stop the rules go first, so the service is never left behind a
//     queue nobody reads, then the queues and sockets close.
//
// Handed-off flows live in the kernel's conntrack table and outlive the
// process.
package gateway
