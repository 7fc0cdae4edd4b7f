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

# The package version: the latest tag (v1.2.3 → 1.2.3; 4 commits later
# 1.2.3+git4.gabcdef0; +dirty for uncommitted changes), 0.0.0+dev without
# one. synguard version prints the same.
VERSION ?= $(shell v=$$(git describe --tags --dirty 2>/dev/null) && \
	echo "$$v" | sed 's/^v//; s/-\([0-9][0-9]*\)-g\([0-9a-f]*\)/+git\1.g\2/; s/-dirty$$/+dirty/' || \
	echo 0.0.0+dev)
# Debian's name for the target architecture.
DEB_ARCH ?= $(shell go env GOARCH | sed 's/^386$$/i386/; s/^arm$$/armhf/; s/^ppc64le$$/ppc64el/; s/^mips64le$$/mips64el/; s/^mipsle$$/mipsel/')
DEB = dist/synguard_$(VERSION)_$(DEB_ARCH).deb

.PHONY: deb
# deb: dist/synguard_<version>_<arch>.deb: the static binary in /usr/sbin,
# the systemd unit, /etc/synguard/synguard.yaml (a conffile) and the docs
# (packaging/nfpm.yaml). Needs no root.
deb:
	rm -rf dist/build
	mkdir -p dist/build
	CGO_ENABLED=0 GOARM=7 go build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' \
		-o dist/build/synguard ./cmd/synguard
	VERSION='$(VERSION)' DEB_ARCH='$(DEB_ARCH)' go tool nfpm package \
		--config packaging/nfpm.yaml --packager deb --target '$(DEB)'
