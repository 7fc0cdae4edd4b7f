#!/bin/sh
# keepalived's notify script for a synguard pair whose conntrackd runs FTFW
# with DisableExternalCache on: /etc/conntrackd/primary-backup.sh on both
# gateways, mode 0755, owned by root.
#
# It follows conntrack-tools' doc/sync/primary-backup.sh, less what the
# disabled external cache makes moot or harmful:
# - no commit (-c) on promotion: the peer's entries are in the kernel
#   table already;
# - no timer reset (-t) on demotion or fault: it schedules a flush of every
#   entry conntrackd does not ignore, and with the external cache disabled
#   those are the copies that make the next fail-over work;
# - conntrackd is not started from here: it runs as a service of its own.

CONNTRACKD_BIN=/usr/sbin/conntrackd
CONNTRACKD_CONFIG=/etc/conntrackd/conntrackd.conf

ctd() {
	if ! "$CONNTRACKD_BIN" -C "$CONNTRACKD_CONFIG" "$@"; then
		logger -t primary-backup "conntrackd $* failed" 2>/dev/null
	fi
}

case "$1" in
primary)
	# Read the internal cache again from the kernel table, which now holds
	# the flows the peer handed off too, so their updates and ends are
	# sent on from here ...
	ctd -f internal
	ctd -R
	# ... and send the whole table to the peer, the new standby.
	ctd -B
	;;
backup)
	# Ask the primary for its whole table: a node that comes back starts
	# with an empty one.
	ctd -n
	;;
fault)
	# Keep the table: when this node is back in service, the copies it
	# holds are still the peer's flows.
	;;
*)
	echo "usage: primary-backup.sh primary|backup|fault" >&2
	exit 1
	;;
esac
exit 0
