# synguard's make targets. The test suite itself is scripts/test.sh (CI
# runs it); these are the runs CI leaves out. All need root.

# How long `make soak` runs (a Go duration, at least 1m).
SOAK_DURATION ?= 10m

.PHONY: soak
# soak: a moderate spoofed SYN flood for SOAK_DURATION while legitimate
# clients connect and download all the time; fails on any legitimate
# failure or on memory growth, and prints a sample every 10 s and a
# summary (e2e/soak_test.go).
soak:
	SYNGUARD_SOAK=1 SYNGUARD_SOAK_DURATION=$(SOAK_DURATION) \
		go test -count=1 -run '^TestSoak$$' -timeout 30m -v ./e2e/
