#!/usr/bin/env bash
# One-line setup of a pacsnode checkout: system packages for the peers the tests and
# benchmarks talk to, a virtual environment with pacsnode and its dev tools, and the
# browser used by the end-to-end tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# fonts-wqy-microhei: Chinese glyphs for the dashboard in Chromium (the browser tests' and a
# server's own screenshots); a user's browser brings its own fonts
SYSTEM_PACKAGES=(dcmtk orthanc orthanc-dicomweb chromium fonts-wqy-microhei)
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
if command -v systemctl >/dev/null && systemctl is-active --quiet orthanc 2>/dev/null; then
  ${SUDO:-} systemctl stop orthanc || true
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# The bundled OHIF viewer (served at /viewer): the prebuilt dist/ of the pinned npm package,
# fetched here and never committed (viewer/dist/ is git-ignored).
OHIF_VERSION=3.12.10
if [ "$(cat viewer/dist/.ohif-version 2>/dev/null)" != "$OHIF_VERSION" ]; then
  echo "setup: fetching the OHIF viewer @ohif/app@$OHIF_VERSION"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null && tar xzf ohif-app-*.tgz)
  rm -rf viewer/dist
  mkdir -p viewer
  mv "$work/package/dist" viewer/dist
  echo "$OHIF_VERSION" > viewer/dist/.ohif-version
  rm -rf "$work"
fi
# Swagger UI for the API pages at /docs, served by the node (FastAPI's default page loads it
# from a CDN and is blank without internet): the files of the pinned npm swagger-ui-dist that
# the page loads, into the git-ignored vendor/swagger-ui/.
SWAGGER_UI_VERSION=5.35.0
if [ "$(cat vendor/swagger-ui/.version 2>/dev/null)" != "$SWAGGER_UI_VERSION" ]; then
  echo "setup: fetching Swagger UI swagger-ui-dist@$SWAGGER_UI_VERSION"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "swagger-ui-dist@$SWAGGER_UI_VERSION" >/dev/null \
    && tar xzf swagger-ui-dist-*.tgz)
  rm -rf vendor/swagger-ui
  mkdir -p vendor/swagger-ui
  for file in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE; do
    cp "$work/package/$file" vendor/swagger-ui/
  done
  echo "$SWAGGER_UI_VERSION" > vendor/swagger-ui/.version
  rm -rf "$work"
fi

# ECharts for the dashboard's charts, served by the node (no CDN at run time): the pinned npm
# package's minified build and its license, into the git-ignored vendor/echarts/.
ECHARTS_VERSION=5.6.0
if [ "$(cat vendor/echarts/.version 2>/dev/null)" != "$ECHARTS_VERSION" ]; then
  echo "setup: fetching ECharts echarts@$ECHARTS_VERSION"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "echarts@$ECHARTS_VERSION" >/dev/null && tar xzf echarts-*.tgz)
  rm -rf vendor/echarts
  mkdir -p vendor/echarts
  cp "$work/package/dist/echarts.min.js" "$work/package/LICENSE" "$work/package/NOTICE" vendor/echarts/
  echo "$ECHARTS_VERSION" > vendor/echarts/.version
  rm -rf "$work"
fi

echo "setup: done. Run the node with .venv/bin/pacsnode serve, the tests with .venv/bin/python -m pytest"
