#!/usr/bin/env bash
# Fetch the browser assets a pacsnode checkout serves itself, from the npm registry (pinned
# versions, git-ignored folders): the OHIF viewer (viewer/dist/), Swagger UI and ECharts
# (vendor/). Needs npm. Used by scripts/setup.sh and the Dockerfile. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# The bundled OHIF viewer (served at /viewer): the prebuilt dist/ of the pinned npm package,
# fetched here and never committed (viewer/dist/ is git-ignored).
OHIF_VERSION=3.12.10
if [ "$(cat viewer/dist/.ohif-version 2>/dev/null)" != "$OHIF_VERSION" ]; then
  echo "fetch-assets: fetching the OHIF viewer @ohif/app@$OHIF_VERSION"
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
  echo "fetch-assets: fetching Swagger UI swagger-ui-dist@$SWAGGER_UI_VERSION"
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
  echo "fetch-assets: fetching ECharts echarts@$ECHARTS_VERSION"
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "echarts@$ECHARTS_VERSION" >/dev/null && tar xzf echarts-*.tgz)
  rm -rf vendor/echarts
  mkdir -p vendor/echarts
  cp "$work/package/dist/echarts.min.js" "$work/package/LICENSE" "$work/package/NOTICE" vendor/echarts/
  echo "$ECHARTS_VERSION" > vendor/echarts/.version
  rm -rf "$work"
fi
