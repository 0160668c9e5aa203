#!/usr/bin/env bash
# System packages the test suite needs: a real Mosquitto (MQTT tests) and its clients
# (mosquitto_pub: benchmarks/mqtt_signals.py's producer), Debian's
# Chromium with its driver (the status page's browser test), systemd-analyze (the unit's
# hardening score). Installed with apt-get when missing and we are root; otherwise this
# names exactly what to install, and fails. (libfaketime comes from PyPI: the test extras.)
set -euo pipefail

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)  # the unit's security score
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages for the tests: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  exit 0
fi
echo "make test needs these system packages: ${need[*]}" >&2
echo "install them (Debian/Ubuntu): sudo apt-get install -y --no-install-recommends ${need[*]}" >&2
exit 1
