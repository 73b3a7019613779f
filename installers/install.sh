#!/bin/sh
# restic-manager agent installer for Linux. Run as root.
#
#   sh install.sh --server https://HOST:PORT --token TOKEN --cert-sha256 HEX [options]
#
# The app prints a command that fetches this script over TLS pinned to its
# certificate and runs it with those three values. This script then:
#   1. checks the server's certificate against --cert-sha256 (before writing anything);
#   2. downloads the agent over that pinned connection and checks its SHA-256;
#   3. installs it, enrols this host with the one-time token (config and state 0700);
#   4. installs and starts a hardened systemd unit;
#   5. lists restic cron jobs and systemd timers already on this host (it never
#      touches them) with the commands to disable them.
# Re-running it on an enrolled host changes nothing unless RM_FORCE_REENROLL=1.
#
# Options:
#   --server URL          https://HOST:PORT of restic-manager's agent listener  (or RM_SERVER)
#   --token TOKEN         one-time enrolment token from the app               (or RM_TOKEN)
#   --cert-sha256 HEX     SHA-256 of the app's certificate (colons/case ignored) (or RM_CERT_SHA256)
#   --config PATH         agent config file (default /etc/restic-manager-agent/config.toml)
#   --hostname NAME       enrol under this name (default: this machine's host name)
#   --restic PATH         restic binary the agent runs (default: restic from PATH)
#   --offline DIR         take the agent (and a restic binary, if there) from DIR instead of
#                         downloading them; used by the offline bundle (needs no curl/openssl)
#   --no-systemd          install and enrol only: start nothing, print how to run the agent
#   --force-reenrol       same as RM_FORCE_REENROLL=1
#   -h, --help
# Environment:
#   RM_FORCE_REENROLL=1   enrol again although this host is enrolled (the old config is kept
#                         aside and put back if the new enrolment fails)
#   RM_EXTRA_RW_PATHS     space-separated paths the service may write besides its own (local or
#                         USB repositories, in-place restore targets): a systemd drop-in
#
# Exit status: 0 done (or nothing to do), 1 failure, 2 usage error. Every failure
# prints what went wrong and what to do about it.

set -eu

PROG="restic-manager install"
NAME="restic-manager-agent"
BIN_DIR="/usr/local/lib/$NAME"
BIN="$BIN_DIR/$NAME"
LINK="/usr/local/bin/$NAME"
DEFAULT_CONFIG="/etc/$NAME/config.toml"
STATE_DIR="/var/lib/$NAME"
UNIT_DIR="/etc/systemd/system"
UNIT="$UNIT_DIR/$NAME.service"
DROPIN_DIR="$UNIT_DIR/$NAME.service.d"
DROPIN="$DROPIN_DIR/10-extra-paths.conf"

SERVER="${RM_SERVER:-}"
TOKEN="${RM_TOKEN:-}"
PIN="${RM_CERT_SHA256:-}"
CONFIG="$DEFAULT_CONFIG"
HOSTNAME_ARG=""
RESTIC_ARG=""
OFFLINE_DIR=""
NO_SYSTEMD=0

TMP=""
# What this run created, removed again if it fails before the end.
CREATED=""
ROLLBACK=0
ASIDE=""

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}
usage_error() {
	printf '%s: error: %s (see: sh install.sh --help)\n' "$PROG" "$*" >&2
	exit 2
}

usage() {
	sed -n '2,/^# Exit status/p' "$0" 2>/dev/null | sed 's/^# \{0,1\}//' ||
		echo "usage: sh install.sh --server URL --token TOKEN --cert-sha256 HEX [--no-systemd]"
}

cleanup() {
	status=$?
	if [ "$ROLLBACK" = 1 ] && [ "$status" -ne 0 ]; then
		rollback
	fi
	if [ -n "$TMP" ] && [ -d "$TMP" ]; then
		rm -rf "$TMP"
	fi
	exit "$status"
}

rollback() {
	say "undoing what this run installed"
	for path in $CREATED; do
		rm -rf "$path"
	done
	if [ -n "$ASIDE" ]; then
		mv -f "$ASIDE/config" "$CONFIG"
		if [ -f "$ASIDE/config.key" ]; then
			mv -f "$ASIDE/config.key" "$CONFIG.key"
		fi
		if [ -f "$ASIDE/secrets.bin" ]; then
			mv -f "$ASIDE/secrets.bin" "$STATE_DIR/secrets.bin"
		fi
		rmdir "$ASIDE" 2>/dev/null || true
		say "the previous enrolment ($CONFIG) was put back"
		if [ "$NO_SYSTEMD" = 0 ] && [ -f "$UNIT" ]; then
			systemctl start "$NAME.service" >/dev/null 2>&1 || true
		fi
	fi
}

need_value() {
	[ $# -ge 2 ] || usage_error "$1 needs a value"
}

parse_args() {
	while [ $# -gt 0 ]; do
		case $1 in
		--server)
			need_value "$@"
			SERVER=$2
			shift 2
			;;
		--server=*)
			SERVER=${1#*=}
			shift
			;;
		--token)
			need_value "$@"
			TOKEN=$2
			shift 2
			;;
		--token=*)
			TOKEN=${1#*=}
			shift
			;;
		--cert-sha256)
			need_value "$@"
			PIN=$2
			shift 2
			;;
		--cert-sha256=*)
			PIN=${1#*=}
			shift
			;;
		--config)
			need_value "$@"
			CONFIG=$2
			shift 2
			;;
		--config=*)
			CONFIG=${1#*=}
			shift
			;;
		--hostname)
			need_value "$@"
			HOSTNAME_ARG=$2
			shift 2
			;;
		--restic)
			need_value "$@"
			RESTIC_ARG=$2
			shift 2
			;;
		--offline)
			need_value "$@"
			OFFLINE_DIR=$2
			shift 2
			;;
		--no-systemd)
			NO_SYSTEMD=1
			shift
			;;
		--force-reenrol | --force-reenroll)
			RM_FORCE_REENROLL=1
			shift
			;;
		-h | --help)
			usage
			exit 0
			;;
		*)
			usage_error "unknown argument '$1'"
			;;
		esac
	done
}

# -- validation -----------------------------------------------------------------

validate_args() {
	[ -n "$SERVER" ] || usage_error "--server is missing: copy the install command shown in the app (Add host)"
	[ -n "$TOKEN" ] || usage_error "--token is missing: copy the install command shown in the app (Add host)"
	[ -n "$PIN" ] || usage_error "--cert-sha256 is missing: copy the install command shown in the app (Add host)"
	parse_server
	PIN=$(printf '%s' "$PIN" | tr -d ':' | tr 'A-F' 'a-f')
	case $PIN in
	*[!0-9a-f]*) usage_error "--cert-sha256 must be 64 hexadecimal digits (got '$PIN')" ;;
	esac
	[ ${#PIN} -eq 64 ] || usage_error "--cert-sha256 must be 64 hexadecimal digits (got ${#PIN})"
	case $TOKEN in
	*[!A-Za-z0-9._~+/=-]*) usage_error "--token contains characters no enrolment token has: copy it again from the app" ;;
	esac
	case $CONFIG in
	/*) ;;
	*) usage_error "--config must be an absolute path (got '$CONFIG')" ;;
	esac
	case $CONFIG in
	*[!A-Za-z0-9._/-]*) usage_error "--config may only contain letters, digits and . _ / - (got '$CONFIG')" ;;
	esac
	if [ -n "$OFFLINE_DIR" ] && [ ! -d "$OFFLINE_DIR" ]; then
		usage_error "--offline $OFFLINE_DIR is not a directory"
	fi
}

# Sets HOST (a name, an IPv4 address or a bracketed IPv6 address) and PORT.
parse_server() {
	SERVER=${SERVER%/}
	case $SERVER in
	https://*) ;;
	*) usage_error "--server must be an https://HOST:PORT URL (got '$SERVER'); copy it from the app" ;;
	esac
	rest=${SERVER#https://}
	case $rest in
	*/* | *@* | *\?* | *\#*) usage_error "--server must be just https://HOST:PORT (got '$SERVER')" ;;
	esac
	case $rest in
	\[*\]:*)
		HOST=${rest%:*}
		PORT=${rest##*:}
		;;
	\[*\])
		HOST=$rest
		PORT=443
		;;
	*:*)
		HOST=${rest%:*}
		PORT=${rest##*:}
		;;
	*)
		HOST=$rest
		PORT=443
		;;
	esac
	case $HOST in
	\[*\]) bare=${HOST#[}; bare=${bare%]}
		case $bare in '' | *[!0-9A-Fa-f:.]*) usage_error "--server has an invalid IPv6 address '$HOST'" ;; esac ;;
	'' | *[!A-Za-z0-9.-]*) usage_error "--server has an invalid host name '$HOST'" ;;
	esac
	case $PORT in
	'' | *[!0-9]*) usage_error "--server has an invalid port '$PORT'" ;;
	esac
	if [ ${#PORT} -gt 5 ] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
		usage_error "--server port $PORT is out of range"
	fi
}

check_platform() {
	[ "$(uname -s)" = Linux ] || die "this installer is for Linux; on Windows use install.ps1"
	[ "$(id -u)" = 0 ] || die "run this as root (e.g. prefix the command with sudo): the agent is installed as a system service"
	machine=$(uname -m)
	case $machine in
	x86_64 | amd64) ARCH=amd64 ;;
	aarch64 | arm64 | armv8l) ARCH=arm64 ;;
	armv7l | armv6l | arm) ARCH=arm ;;
	i386 | i486 | i586 | i686) ARCH=386 ;;
	*) die "unsupported CPU architecture '$machine': build the agent for it (see packaging/README.md) and install it by hand" ;;
	esac
}

need_tool() {
	command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed: $2"
}

check_tools() {
	for tool in mktemp sha256sum install uname id; do
		need_tool "$tool" "install coreutils"
	done
	if [ -z "$OFFLINE_DIR" ]; then
		need_tool curl "install it (apt-get install curl / dnf install curl), or use an offline bundle from the app"
		need_tool openssl "install it (apt-get install openssl / dnf install openssl), or use an offline bundle from the app"
	fi
}

has_systemd() {
	[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

check_service_manager() {
	[ "$NO_SYSTEMD" = 1 ] && return 0
	has_systemd || die "systemd is not running on this host, so the agent cannot be installed as a service. Re-run with --no-systemd to install and enrol it without a service, then start it with your init system. Nothing was changed."
}

# -- already enrolled? ------------------------------------------------------------

config_value() {
	sed -n "s/^$1 = \"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" "$CONFIG" 2>/dev/null | head -n 1
}

already_enrolled() {
	[ -f "$CONFIG" ] || return 1
	host_id=$(config_value host_id)
	server=$(config_value server_url)
	if [ "${RM_FORCE_REENROLL:-0}" = 1 ]; then
		say "this host is enrolled (host id ${host_id:-?} at ${server:-?}); RM_FORCE_REENROLL=1: enrolling it again"
		return 1
	fi
	say "this host is already enrolled (host id ${host_id:-?} at ${server:-?}, config $CONFIG): nothing was changed"
	say "to enrol it again with this token, add --force-reenrol at the end of the command (or set RM_FORCE_REENROLL=1)"
	say "to remove the agent: sh $BIN_DIR/uninstall.sh (add --purge to delete its config and state)"
	return 0
}

# -- the pinned connection --------------------------------------------------------

# Fetches the server's certificate and compares its SHA-256 with the pin. Sets
# CERT (a PEM file in TMP) and CURL_NAME (the name curl verifies it under).
verify_pin() {
	CERT="$TMP/server.pem"
	timeout_cmd=""
	if command -v timeout >/dev/null 2>&1; then
		timeout_cmd="timeout 20"
	fi
	# shellcheck disable=SC2086 # timeout_cmd is empty or two words
	if ! $timeout_cmd openssl s_client -connect "$HOST:$PORT" -servername localhost </dev/null \
		>"$TMP/s_client.out" 2>"$TMP/s_client.err"; then
		:
	fi
	if ! openssl x509 -in "$TMP/s_client.out" -out "$CERT" 2>/dev/null; then
		reason=$(grep -i -m 1 -E 'refused|timed out|unreachable|no route|errno|resolv|unknown|error' "$TMP/s_client.err" 2>/dev/null || true)
		die "cannot reach $SERVER over TLS${reason:+ ($reason)}; check that restic-manager is running and that this host can reach $HOST port $PORT. Nothing was changed."
	fi
	got=$(openssl x509 -in "$CERT" -noout -fingerprint -sha256 | sed 's/^[^=]*=//' | tr -d ':' | tr 'A-F' 'a-f')
	if [ "$got" != "$PIN" ]; then
		die "the server's certificate does not match --cert-sha256 (expected $PIN, $HOST:$PORT presented $got). Check the fingerprint in the app (Settings → certificate) and that --server points at restic-manager. Nothing was changed."
	fi
	# Its public key, for curl to pin as well: a second connection must reach the
	# same key, not merely a certificate that chains to this one.
	SPKI=$(openssl x509 -in "$CERT" -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | openssl base64 -A)
	# curl checks the name in the URL against the certificate. The app's certificate
	# always names localhost, but not necessarily the name used to reach it (it is
	# kept when the app's address changes), so curl is pointed at HOST:PORT under
	# a name the certificate carries. The certificate itself is the only trust anchor.
	if certificate_names "$HOST"; then
		CURL_NAME=$HOST
	else
		CURL_NAME=localhost
	fi
	say "the server's certificate matches the pin ($PIN)"
}

certificate_names() {
	case $1 in
	\[*\]) bare=${1#[}; bare=${bare%]}; openssl x509 -in "$CERT" -noout -checkip "$bare" 2>/dev/null | grep -q 'does match' ;;
	*[!0-9.]*) openssl x509 -in "$CERT" -noout -checkhost "$1" 2>/dev/null | grep -q 'does match' ;;
	*) openssl x509 -in "$CERT" -noout -checkip "$1" 2>/dev/null | grep -q 'does match' ;;
	esac
}

# fetch PATH OUT [optional]: GET https://server/PATH into OUT over the pinned
# connection; with "optional", a failure only returns 1.
fetch() {
	url="https://$CURL_NAME:$PORT$1"
	out=$2
	optional=${3:-}
	# -q first: no ~/.curlrc (it could say "insecure"). The pinned certificate is
	# the only CA, and its key is pinned as well.
	set -- -q -fsS --proto '=https' --tlsv1.2 --retry 2 --connect-timeout 20 --max-time 300 \
		--cacert "$CERT" --pinnedpubkey "sha256//$SPKI"
	if [ "$CURL_NAME" != "$HOST" ]; then
		set -- "$@" --connect-to "$CURL_NAME:$PORT:$HOST:$PORT"
	fi
	if ! curl "$@" -o "$out" "$url" 2>"$TMP/curl.err"; then
		if [ -n "$optional" ]; then
			rm -f "$out"
			return 1
		fi
		reason=$(head -c 400 "$TMP/curl.err")
		case $url in
		*/agent/binary*)
			die "downloading ${url#*"$PORT"} from $SERVER failed: $reason. If the answer is 404, the app has no agent build for linux/$ARCH: build one (packaging/README.md) or install the agent by hand. Nothing was changed."
			;;
		esac
		die "downloading ${url#*"$PORT"} from $SERVER failed: $reason. Nothing was changed."
	fi
}

sha256_of() {
	sha256sum "$1" | cut -c1-64
}

# Puts the agent in TMP/agent (and a bundled restic in TMP/restic) with their
# checksums verified.
get_agent() {
	if [ -n "$OFFLINE_DIR" ]; then
		get_agent_offline
		return
	fi
	fetch "/agent/binary.sha256?os=linux&arch=$ARCH" "$TMP/agent.sha256"
	fetch "/agent/binary?os=linux&arch=$ARCH" "$TMP/agent"
	expected=$(cut -c1-64 "$TMP/agent.sha256")
	got=$(sha256_of "$TMP/agent")
	[ "$got" = "$expected" ] || die "the downloaded agent's SHA-256 is $got, but the server announced $expected: the download was damaged. Run the command again. Nothing was changed."
	fetch "/install/$NAME.service" "$TMP/unit"
	fetch /install/uninstall.sh "$TMP/uninstall.sh" optional ||
		warn "this app does not serve uninstall.sh: to remove the agent later, fetch it from the app's installers folder"
	say "downloaded the agent for linux/$ARCH (sha256 $got)"
}

get_agent_offline() {
	sums="$OFFLINE_DIR/SHA256SUMS"
	[ -f "$sums" ] || die "$sums is missing: the offline bundle is incomplete; export it again from the app"
	agent_file="$NAME-linux-$ARCH"
	[ -f "$OFFLINE_DIR/$agent_file" ] || die "this bundle has no agent for linux/$ARCH (this host's architecture): export a bundle for $ARCH from the app"
	for file in "$agent_file" "$NAME.service" uninstall.sh restic; do
		[ -f "$OFFLINE_DIR/$file" ] || continue
		expected=$(sed -n "s/^\([0-9a-f]\{64\}\)  $file\$/\1/p" "$sums")
		[ -n "$expected" ] || die "$sums lists no checksum for $file: export the bundle again from the app"
		got=$(sha256_of "$OFFLINE_DIR/$file")
		[ "$got" = "$expected" ] || die "$file in the bundle is damaged (sha256 $got, expected $expected): copy the bundle again"
	done
	cp "$OFFLINE_DIR/$agent_file" "$TMP/agent"
	cp "$OFFLINE_DIR/$NAME.service" "$TMP/unit"
	if [ -f "$OFFLINE_DIR/uninstall.sh" ]; then
		cp "$OFFLINE_DIR/uninstall.sh" "$TMP/uninstall.sh"
	fi
	if [ -f "$OFFLINE_DIR/restic" ]; then
		cp "$OFFLINE_DIR/restic" "$TMP/restic"
		chmod 0755 "$TMP/restic"
	fi
	say "using the agent from the offline bundle (linux/$ARCH)"
}

check_agent_runs() {
	chmod 0755 "$TMP/agent"
	if ! version=$("$TMP/agent" --version 2>"$TMP/agent.err"); then
		die "the agent binary does not run on this host: $(head -c 300 "$TMP/agent.err"). It needs glibc 2.35 or newer (Debian 12, Ubuntu 22.04); see packaging/README.md. Nothing was changed."
	fi
	say "agent: $version"
}

# -- installing ---------------------------------------------------------------------

# make_dir DIR MODE: create DIR (and remember it for a rollback) unless it exists.
make_dir() {
	if [ ! -d "$1" ]; then
		parent=$1
		while [ ! -d "$(dirname "$parent")" ]; do
			parent=$(dirname "$parent")
		done
		mkdir -p "$1"
		CREATED="$CREATED $parent"
	fi
	# Also when it existed: a wider mode left by someone else is narrowed.
	chmod "$2" "$1"
}

set_aside_old_enrolment() {
	[ -f "$CONFIG" ] || return 0
	if [ "$NO_SYSTEMD" = 0 ]; then
		systemctl stop "$NAME.service" >/dev/null 2>&1 || true
	fi
	ASIDE="$(dirname "$CONFIG")/.previous-$(date +%Y%m%d%H%M%S)"
	mkdir -m 0700 "$ASIDE"
	mv "$CONFIG" "$ASIDE/config"
	if [ -f "$CONFIG.key" ]; then
		mv "$CONFIG.key" "$ASIDE/config.key"
	fi
	if [ -f "$STATE_DIR/secrets.bin" ]; then
		mv "$STATE_DIR/secrets.bin" "$ASIDE/secrets.bin"
	fi
}

install_files() {
	make_dir "$(dirname "$CONFIG")" 0700
	make_dir "$STATE_DIR" 0700
	make_dir "$BIN_DIR" 0755
	[ -e "$BIN" ] || CREATED="$CREATED $BIN"
	# A new name, then a rename: a running agent keeps its old file.
	install -m 0755 "$TMP/agent" "$BIN.new"
	mv -f "$BIN.new" "$BIN"
	if [ -f "$TMP/restic" ]; then
		[ -e "$BIN_DIR/restic" ] || CREATED="$CREATED $BIN_DIR/restic"
		install -m 0755 "$TMP/restic" "$BIN_DIR/restic.new"
		mv -f "$BIN_DIR/restic.new" "$BIN_DIR/restic"
		[ -n "$RESTIC_ARG" ] || RESTIC_ARG="$BIN_DIR/restic"
	fi
	if [ -f "$TMP/uninstall.sh" ]; then
		install -m 0755 "$TMP/uninstall.sh" "$BIN_DIR/uninstall.sh"
	fi
	if [ ! -e "$LINK" ] || [ -L "$LINK" ]; then
		[ -e "$LINK" ] || [ -L "$LINK" ] || CREATED="$CREATED $LINK"
		mkdir -p "$(dirname "$LINK")"
		ln -sf "$BIN" "$LINK"
	else
		warn "$LINK exists and is not a link: left alone; the agent is $BIN"
	fi
}

enrol() {
	set -- enrol --server "$SERVER" --cert-sha256 "$PIN" \
		--config "$CONFIG" --state-dir "$STATE_DIR"
	if [ -n "$RESTIC_ARG" ]; then
		set -- "$@" --restic "$RESTIC_ARG"
	fi
	if [ -n "$HOSTNAME_ARG" ]; then
		set -- "$@" --hostname "$HOSTNAME_ARG"
	fi
	# The token goes in the environment: a command line is readable by every user.
	if ! RM_ENROL_TOKEN="$TOKEN" "$BIN" "$@"; then
		die "enrolment failed (the agent's message is above); nothing of this run was kept. Fix the cause, create a new token in the app if this one was used or expired, and run the command again."
	fi
	chmod 0600 "$CONFIG" "$CONFIG.key" 2>/dev/null || true
}

install_unit() {
	sed "s#/etc/$NAME/config.toml#$CONFIG#g" "$TMP/unit" >"$TMP/unit.out"
	grep -q "^ExecStart=$BIN run --config $CONFIG\$" "$TMP/unit.out" ||
		die "the unit file from the server does not start $BIN: is the app a compatible version?"
	mkdir -p "$UNIT_DIR"
	[ -e "$UNIT" ] || CREATED="$CREATED $UNIT"
	install -m 0644 "$TMP/unit.out" "$UNIT"
	if [ -n "${RM_EXTRA_RW_PATHS:-}" ]; then
		paths=""
		for path in $RM_EXTRA_RW_PATHS; do
			case $path in
			/*) ;;
			*) die "RM_EXTRA_RW_PATHS: '$path' is not an absolute path" ;;
			esac
			paths="$paths -$path"
		done
		[ -d "$DROPIN_DIR" ] || CREATED="$CREATED $DROPIN_DIR"
		mkdir -p "$DROPIN_DIR"
		printf '# Written by install.sh (RM_EXTRA_RW_PATHS): more paths the agent may write.\n[Service]\nReadWritePaths=%s\n' "${paths# }" >"$DROPIN"
	fi
	systemctl daemon-reload || die "systemctl daemon-reload failed"
	systemctl enable "$NAME.service" >/dev/null 2>&1 || die "systemctl enable $NAME.service failed"
	systemctl restart "$NAME.service" || die "the service did not start; see: journalctl -u $NAME -n 50"
	i=0
	while [ $i -lt 20 ]; do
		if systemctl is-active --quiet "$NAME.service"; then
			say "the service $NAME is running (logs: journalctl -u $NAME -f)"
			return 0
		fi
		i=$((i + 1))
		sleep 0.5
	done
	die "the service $NAME did not stay running; see: systemctl status $NAME; journalctl -u $NAME -n 50"
}

print_manual_start() {
	say "--no-systemd: the agent is installed and enrolled, and nothing was started."
	say "run it in the foreground with:"
	printf '    %s run --config %s\n' "$BIN" "$CONFIG"
	say "to run it as a service instead, run the install again without --no-systemd (after uninstall.sh) on a host with systemd"
}

# -- restic jobs that already exist -----------------------------------------------

report_existing_jobs() {
	found=0
	for file in /etc/crontab /etc/cron.d/* /etc/cron.hourly/* /etc/cron.daily/* \
		/etc/cron.weekly/* /etc/cron.monthly/* /var/spool/cron/crontabs/* /var/spool/cron/*; do
		[ -f "$file" ] || continue
		lines=$(grep -n -i 'restic' "$file" 2>/dev/null | grep -v -i 'restic-manager' | grep -v '^[0-9]*:[[:space:]]*#' || true)
		[ -n "$lines" ] || continue
		if [ $found = 0 ]; then
			say "restic already runs on a schedule here. These jobs were left alone; disable them once the app backs this host up, or both run:"
			found=1
		fi
		printf '  %s:\n' "$file"
		printf '%s\n' "$lines" | sed 's/^/      line /'
		case $file in
		/var/spool/cron/*) printf '    disable: crontab -u %s -e   (comment the line out)\n' "$(basename "$file")" ;;
		/etc/cron.hourly/* | /etc/cron.daily/* | /etc/cron.weekly/* | /etc/cron.monthly/*)
			printf '    disable: chmod -x %s\n' "$file" ;;
		*) printf '    disable: comment the line out in %s\n' "$file" ;;
		esac
	done
	if command -v systemctl >/dev/null 2>&1; then
		timers=$(systemctl list-timers --all --no-legend --plain 2>/dev/null |
			awk '{for (i = 1; i <= NF; i++) if ($i ~ /\.timer$/) print $i}' |
			grep -i restic | grep -v -i 'restic-manager' || true)
		for timer in $timers; do
			if [ $found = 0 ]; then
				say "restic already runs on a schedule here. These jobs were left alone; disable them once the app backs this host up, or both run:"
				found=1
			fi
			printf '  systemd timer %s\n' "$timer"
			printf '    disable: systemctl disable --now %s\n' "$timer"
		done
	fi
	if [ $found = 0 ]; then
		say "no other restic cron jobs or systemd timers found"
	fi
}

# -- main ---------------------------------------------------------------------------

main() {
	parse_args "$@"
	validate_args
	check_platform
	if already_enrolled; then
		report_existing_jobs
		exit 0
	fi
	check_tools
	check_service_manager
	umask 077
	TMP=$(mktemp -d "${TMPDIR:-/tmp}/restic-manager-install.XXXXXX")
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	if [ -z "$OFFLINE_DIR" ]; then
		verify_pin
	fi
	get_agent
	check_agent_runs
	# From here on a failure undoes what this run wrote.
	ROLLBACK=1
	if [ "${RM_FORCE_REENROLL:-0}" = 1 ]; then
		set_aside_old_enrolment
	fi
	install_files
	enrol
	# The token is spent: whatever fails next, this enrolment is kept.
	ROLLBACK=0
	if [ "$NO_SYSTEMD" = 1 ]; then
		print_manual_start
	else
		install_unit
	fi
	if [ -n "$ASIDE" ]; then
		say "the previous enrolment is kept in $ASIDE (delete it when the new one works)"
	fi
	report_existing_jobs
	say "installed: agent $BIN, config $CONFIG, state $STATE_DIR"
	if [ -f "$BIN_DIR/uninstall.sh" ]; then
		say "to remove it: sh $BIN_DIR/uninstall.sh [--purge]"
	fi
	say "done: the host should show as online in the app within a few seconds"
}

# Called last, so a download cut short runs nothing.
main "$@"
