#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, the
# project's virtualenv and a second restic (0.18 from Debian trixie) used
# to test against two restic versions. Fast when everything is present.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${RM_CACHE_DIR:-$root/.cache}"
venv="$root/.venv"
stamp_dir="$cache/stamps"
mkdir -p "$stamp_dir"

apt_packages=(
  # Qt runtime, offscreen and under Xvfb
  libglib2.0-0 libgl1 libegl1 libdbus-1-3 libfontconfig1 libxkbcommon0
  libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0
  xvfb xauth
  # backup tools and a real REST backend with append-only + bcrypt htpasswd
  restic rclone apache2-utils
  # a real OS keyring, headless
  gnome-keyring dbus
  sqlite3
  tshark  # packet capture for tests/security (noninteractive: no setuid dumpcap, no prompt)
)

need_sudo() { if [ "$(id -u)" -ne 0 ]; then echo sudo; fi; }

install_apt() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then return; fi
  echo "bootstrap: installing apt packages: ${missing[*]}"
  $(need_sudo) apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $(need_sudo) apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The mirror is taken from the machine's own apt sources so that no host
# name is written into the repository.
debian_mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  [ -n "$uri" ] || { echo "bootstrap: cannot find a Debian mirror in the apt sources" >&2; return 1; }
  echo "$uri"
}

install_restic_018() {
  local dest="$cache/restic-0.18"
  if [ -x "$dest/usr/bin/restic" ] && "$dest/usr/bin/restic" version | grep -q "restic 0.18"; then return; fi
  echo "bootstrap: fetching restic 0.18 from Debian trixie"
  local work="$cache/apt-trixie"
  rm -rf "$work"
  mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/etc/preferences.d"
  local mirror; mirror=$(debian_mirror)
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$work/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=-"
    -o "Dir::Etc::Preferences=$work/etc/preferences" -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work" -o "Dir::State::status=/var/lib/dpkg/status"
    -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" update -qq
  (cd "$work" && apt-get "${opts[@]}" download restic)
  rm -rf "$dest"; mkdir -p "$dest"
  dpkg-deb -x "$work"/restic_*.deb "$dest"
  "$dest/usr/bin/restic" version
}

install_venv() {
  local stamp="$stamp_dir/venv"
  local want; want=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  echo "bootstrap: preparing $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e "$root[dev]"
  echo "$want" > "$stamp"
}

install_apt
install_restic_018
install_venv
