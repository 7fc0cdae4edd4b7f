#!/usr/bin/env bash
# Quick start: build synguard and run its demo lab (client, gateway and a
# real HTTP backend in network namespaces, a bounded spoofed SYN flood and
# legitimate clients, a live report), then tear it all down.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
go build -o synguard ./cmd/synguard
exec ./synguard lab demo "$@"
