#!/bin/sh
# Removes the restic-manager agent that install.sh installed. Run as root.
#
#   sh uninstall.sh [--purge] [--config PATH]
#
# Stops and disables the service, removes the unit, the binary and its link.
# The config (/etc/restic-manager-agent) and state (/var/lib/restic-manager-agent:
# outbox, encrypted credentials, restic cache) are kept unless --purge is given,
# so a re-install can pick up where this one stopped. Repositories and snapshots
# are never touched. The host stays listed in the app: delete it there to revoke
# its credentials for good.
#
# Exit status: 0 removed (or nothing was installed), 1 failure, 2 usage error.

set -eu

PROG="restic-manager uninstall"
NAME="restic-manager-agent"
BIN_DIR="/usr/local/lib/$NAME"
LINK="/usr/local/bin/$NAME"
CONFIG="/etc/$NAME/config.toml"
STATE_DIR="/var/lib/$NAME"
UNIT="/etc/systemd/system/$NAME.service"
DROPIN_DIR="/etc/systemd/system/$NAME.service.d"
PURGE=0

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
usage_error() {
	printf '%s: error: %s (usage: sh uninstall.sh [--purge] [--config PATH])\n' "$PROG" "$*" >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--purge)
		PURGE=1
		shift
		;;
	--config)
		[ $# -ge 2 ] || usage_error "--config needs a value"
		CONFIG=$2
		shift 2
		;;
	-h | --help)
		sed -n '2,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) usage_error "unknown argument '$1'" ;;
	esac
done
case $CONFIG in
/*) ;;
*) usage_error "--config must be an absolute path (got '$CONFIG')" ;;
esac

[ "$(id -u)" = 0 ] || die "run this as root (e.g. with sudo)"

CONFIG_DIR=$(dirname "$CONFIG")
# The state directory the agent was enrolled with, if the config says so.
if [ -f "$CONFIG" ]; then
	configured=$(sed -n 's/^state_dir = "\([^"]*\)"$/\1/p' "$CONFIG" | head -n 1)
	if [ -n "$configured" ]; then
		STATE_DIR=$configured
	fi
fi

removed=0
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	if [ -f "$UNIT" ] || systemctl cat "$NAME.service" >/dev/null 2>&1; then
		systemctl disable --now "$NAME.service" >/dev/null 2>&1 ||
			systemctl stop "$NAME.service" >/dev/null 2>&1 || true
		if systemctl is-active --quiet "$NAME.service"; then
			die "the service $NAME is still running after 'systemctl stop'; see: systemctl status $NAME"
		fi
		say "stopped and disabled the service $NAME"
	fi
fi
for path in "$UNIT" "$DROPIN_DIR"; do
	if [ -e "$path" ]; then
		rm -rf "$path"
		removed=1
		say "removed $path"
	fi
done
if [ $removed = 1 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ -L "$LINK" ]; then
	rm -f "$LINK"
	say "removed $LINK"
fi
if [ -d "$BIN_DIR" ]; then
	rm -rf "$BIN_DIR"
	removed=1
	say "removed $BIN_DIR"
fi

if [ $PURGE = 1 ]; then
	for dir in "$CONFIG_DIR" "$STATE_DIR"; do
		# Only folders named after the agent: a config pointing state_dir at /srv
		# must not turn --purge into rm -rf /srv.
		if [ "$(basename "$dir")" != "$NAME" ]; then
			say "not purging $dir: it is not a folder of its own ($NAME); remove what the agent left there by hand"
			continue
		fi
		if [ -e "$dir" ]; then
			rm -rf "$dir"
			removed=1
			say "purged $dir"
		fi
	done
else
	for dir in "$CONFIG_DIR" "$STATE_DIR"; do
		if [ -e "$dir" ]; then
			say "kept $dir (remove it with --purge)"
		fi
	done
fi

if [ $removed = 0 ]; then
	say "the agent was not installed here: nothing to remove"
else
	say "done. The host is still listed in restic-manager: delete it there to revoke its access."
fi
