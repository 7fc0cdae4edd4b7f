#!/usr/bin/env bash
# Runs synguard's whole test suite as root: unit, property, fuzz-corpus and
# integration tests (real kernel netfilter, conntrack and TCP in network
# namespaces). Integration tests fail rather than skip when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed on: $unformatted" >&2
	exit 1
fi
go vet ./...
# One package at a time: the integration tests measure floods and
# transfers, and on two cores they should not compete with each other.
CI="${CI:-1}" go test -count=1 -p 1 -timeout 30m ./...
