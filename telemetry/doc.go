// Package telemetry turns synguard's counters into Prometheus metrics and
// its events into structured log lines.
//
// Metrics are collected at scrape time from the engine's per-worker
// counters, so the packet path only ever increments an uncontended atomic:
// nothing is registered, labelled or allocated per packet. Labels are
// low-cardinality (service, mode), never per client.
package telemetry
