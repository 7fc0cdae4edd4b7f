// Package ha holds the configuration of an active/standby pair of synguard
// gateways that docs/ha.md documents: keepalived.conf, conntrackd.conf and
// keepalived's notify script, primary-backup.sh. The lab (synguard lab ha)
// and its tests run these files as they are, so what the guide shows is
// what was tested.
package ha

import "embed"

// The files, by name.
const (
	Keepalived    = "keepalived.conf"
	Conntrackd    = "conntrackd.conf"
	PrimaryBackup = "primary-backup.sh"
)

// Files holds Keepalived, Conntrackd and PrimaryBackup.
//
//go:embed keepalived.conf conntrackd.conf primary-backup.sh
var Files embed.FS
