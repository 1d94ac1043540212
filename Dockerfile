# The pacsnode node as a container image (docs/deployment.md): DICOM 11112, HTTP 8042,
# HL7 MLLP 2575; the data folder /var/lib/pacsnode; the config /etc/pacsnode/pacsnode.toml.

# The browser assets the node serves (OHIF viewer, Swagger UI, ECharts), from the npm registry.
FROM node:22-bookworm-slim AS assets
WORKDIR /src
COPY scripts/fetch-assets.sh scripts/
RUN scripts/fetch-assets.sh

FROM python:3.11-slim-bookworm
# tini: PID 1 that passes SIGTERM on and reaps children (the GDCM decoder runs in one).
# dcmtk: echoscu/storescu for a health check by C-ECHO and for checks by hand.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini dcmtk \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system pacsnode \
    && useradd --system --gid pacsnode --home-dir /var/lib/pacsnode --shell /usr/sbin/nologin pacsnode \
    && install -d -o pacsnode -g pacsnode -m 0700 /var/lib/pacsnode \
    && install -d -m 0755 /etc/pacsnode

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/pacsnode/bin:$PATH
WORKDIR /opt/pacsnode/src
COPY pyproject.toml README.md ./
COPY access access
COPY api api
COPY audit audit
COPY catalog catalog
COPY config config
COPY dashboard dashboard
COPY deid deid
COPY dicomweb dicomweb
COPY export export
COPY ingest ingest
COPY jobs jobs
COPY labeling labeling
COPY node node
COPY scp scp
COPY storage storage
RUN python -m venv /opt/pacsnode \
    && /opt/pacsnode/bin/pip install . \
    && rm -rf /opt/pacsnode/src
# The node looks for its assets beside its packages (README: "copy the folders").
COPY --from=assets /src/viewer/dist /tmp/assets/viewer/dist
COPY --from=assets /src/vendor /tmp/assets/vendor
RUN site=$(/opt/pacsnode/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && mv /tmp/assets/viewer /tmp/assets/vendor "$site"/ \
    && rm -rf /tmp/assets

USER pacsnode
WORKDIR /var/lib/pacsnode
ENV PACSNODE_DATA_DIR=/var/lib/pacsnode \
    PACSNODE_DICOM_HOST=0.0.0.0 \
    PACSNODE_HTTP_HOST=0.0.0.0 \
    PACSNODE_LABELING__MLLP_HOST=0.0.0.0
VOLUME ["/var/lib/pacsnode"]
EXPOSE 11112 8042 2575
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8042/healthz', timeout=8)"]
ENTRYPOINT ["tini", "--"]
CMD ["pacsnode", "serve", "--config", "/etc/pacsnode/pacsnode.toml"]
