#!/usr/bin/env bash
# Installs the system packages synguard, its lab and its tests use, on
# Debian or Ubuntu, as root. Go itself (1.26 or later) must already be on
# PATH or in /usr/local/go/bin.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "deps: run as root (netfilter, namespaces and apt need it)" >&2
	exit 1
fi

# tcpdump reads the attack samples back; make, systemd (systemd-analyze),
# strace and util-linux (setpriv, unshare) are for the package's test and
# the unit's sandbox test.
packages=(iptables conntrack iproute2 procps kmod curl ca-certificates chromium iperf3 keepalived conntrackd
	tcpdump make systemd strace util-linux)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	# The HA lab runs its own keepalived and conntrackd in namespaces; the
	# host services the packages just enabled are not wanted.
	for p in "${missing[@]}"; do
		case "$p" in
		keepalived | conntrackd)
			if [ -d /run/systemd/system ]; then
				systemctl disable --now "$p" >/dev/null 2>&1 || true
			fi
			;;
		esac
	done
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi
if ! command -v go >/dev/null 2>&1; then
	echo "deps: Go 1.26 or later is required (https://go.dev/doc/install)" >&2
	exit 1
fi

# The kernel modules the gateway's rules use; loading them up front gives a
# clear error on a kernel that lacks them.
for m in nf_conntrack nfnetlink_queue xt_NFQUEUE xt_conntrack xt_connmark xt_CT veth; do
	modprobe -q "$m" 2>/dev/null || true
done
