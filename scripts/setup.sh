#!/usr/bin/env bash
# One-line setup of a pacsnode checkout: system packages for the peers the tests and
# benchmarks talk to, a virtual environment with pacsnode and its dev tools, and the
# browser used by the end-to-end tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# fonts-wqy-microhei: Chinese glyphs for the dashboard in Chromium (the browser tests' and a
# server's own screenshots); a user's browser brings its own fonts. haproxy: the load balancer
# of docs/deployment.md, checked and run in front of two nodes by the tests.
SYSTEM_PACKAGES=(dcmtk orthanc orthanc-dicomweb chromium fonts-wqy-microhei haproxy)
# npm fetches the OHIF viewer; take Debian's only where no Node.js/npm is installed already
# (a NodeSource nodejs bundles npm and conflicts with Debian's npm package).
command -v npm >/dev/null || SYSTEM_PACKAGES+=(nodejs npm)
PYTHON=${PYTHON:-python3}

missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "setup: please install ${missing[*]} (no apt-get here)" >&2
  fi
fi
# The orthanc package starts a system service listening on 4242/8042; the tests start
# their own Orthanc on free loopback ports and pacsnode's default HTTP port is 8042.
# The haproxy package's service (if it starts one) is not used either.
for service in orthanc haproxy; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
    ${SUDO:-} systemctl stop "$service" || true
  fi
done

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# The browser assets the node serves (OHIF viewer, Swagger UI, ECharts), from the npm registry.
scripts/fetch-assets.sh

echo "setup: done. Run the node with .venv/bin/pacsnode serve, the tests with .venv/bin/python -m pytest"
