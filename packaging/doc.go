// Package packaging holds synguard's Debian package: the systemd unit
// (synguard.service), the example configuration installed as
// /etc/synguard/synguard.yaml, the nfpm configuration that `make deb`
// builds the package with, and the maintainer scripts. Its test builds
// the package, installs it, checks it and purges it. It has no code.
package packaging
