// Package telemetry is what an operator sees of synguard: structured log
// events, Prometheus metrics and a live dashboard.
//
// Events. Every log line is a JSON object with time, level, a stable
// snake_case event name (the Event* constants, documented with their
// fields in docs/events.md) and typed fields. NewLogger puts a
// LineLimiter in front of the output: at most a burst of lines per event
// kind per second pass, whichever package logs them, and the rest are
// counted (synguard_log_suppressed_total, and a log_suppressed event each
// stats interval). A flood therefore costs a log pipeline a bounded
// number of lines per second.
//
// Metrics are collected at scrape time from the engine's per-worker
// counters through a Source, so the packet path only ever increments an
// uncontended atomic: nothing is registered, labelled or allocated per
// packet. The backend handshake histogram (Histograms) is a fixed set of
// atomic bucket counters per service, observed once per hand-off without
// allocating. Labels are low-cardinality (service, mode, queue, event),
// never per client.
//
// The dashboard is a self-contained page (HTML, script and style embedded
// in the binary, nothing loaded from elsewhere) served at / next to
// /metrics. It polls /api/stats once a second; Telemetry.Run samples the
// Source every second for it, keeping two minutes of history, and logs the
// periodic stats and queue_overflow events. The document also carries
// each service's backend state, the attack in progress with its top
// source prefixes, the attacks that ended (from an AttackSource), and the
// last RecentEvents log lines, which the LineLimiter keeps in a fixed
// ring. FetchStats reads it back: synguard status is built on it.
//
// Attack metrics stay bounded: synguard_attack_active and
// synguard_attacks_total per service, never a series per source prefix.
package telemetry
