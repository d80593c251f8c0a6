#!/bin/sh
# Install everything the sensor needs on a fresh Debian machine, then run a make target.
#   sh deploy/bootstrap.sh example   # install, analyse the bundled example capture
#   sh deploy/bootstrap.sh test      # install, run ruff, mypy and the whole test suite
set -eu
cd "$(dirname "$0")/.."
target="${1:-example}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=""
command -v make >/dev/null 2>&1 || need="$need make"
command -v tshark >/dev/null 2>&1 || need="$need tshark"
# Prometheus (promtool) and Alertmanager (amtool): alert rule checks and the end-to-end monitoring tests
command -v promtool >/dev/null 2>&1 || need="$need prometheus"
command -v amtool >/dev/null 2>&1 || need="$need prometheus-alertmanager"
# the live-capture tests: network namespaces with a veth pair, tcpreplay on one end; openssl for the TLS exporter test
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v tcpreplay >/dev/null 2>&1 || need="$need tcpreplay"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# systemd-analyze verifies the shipped unit (the test must not skip on a fresh machine)
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
# nDPI's ndpiReader is the speed yardstick of `make bench`; ffmpeg encodes the real-codec media corpus
command -v ndpiReader >/dev/null 2>&1 || need="$need libndpi-bin"
command -v ffmpeg >/dev/null 2>&1 || need="$need ffmpeg"
# PostgreSQL (initdb, pg_ctl) for the fleet lake's catalog in the tests
[ -x /usr/lib/postgresql/15/bin/initdb ] || command -v initdb >/dev/null 2>&1 || need="$need postgresql"
command -v python3 >/dev/null 2>&1 || need="$need python3"
if ! python3 -m venv --help >/dev/null 2>&1; then need="$need python3-venv"; fi
if [ -n "$need" ]; then
    echo "bootstrap: installing Debian packages:$need"
    $SUDO apt-get update -qq
    # tshark asks whether non-root users may capture; the sensor's service user gets capabilities instead.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
fi
exec make "$target"
