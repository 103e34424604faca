# One image for every Paddock service of compose.yaml (web, worker, control, flower); the
# command picks the role. Built FROM the sandbox base image that `make images` makes on this host
# (debootstrap + docker import), so no registry is needed: only the Debian mirror and the Python
# package index. Sandbox images are not built here: `make images` builds them on each sandbox
# host, because the host worker starts sandboxes on that host's Docker engine.
ARG BASE_IMAGE=paddock/base:latest
FROM ${BASE_IMAGE}

# PEM text of extra CAs to trust, at build time (pip, apt) and at run time (LLM vendors, SMTP):
# for a network that inspects TLS. Public certificates, not secrets, so a build argument is fine.
ARG EXTRA_CA_CERTS=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PADDOCK_DATA_DIR=/var/lib/paddock \
    PATH=/opt/paddock/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

USER root
WORKDIR /app
# Debian's Python 3.11 (the lock's interpreter). e2fsprogs and mount: the host worker makes and
# mounts each sandbox's capped storage. iptables: the host worker installs the egress rules
# (workers/backends/docker/egress.py) when it runs in the host's network namespace (compose.yaml).
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
        printf '%s\n' "$EXTRA_CA_CERTS" >/usr/local/share/ca-certificates/paddock-extra.crt; \
    fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv e2fsprogs mount iptables \
    && update-ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

# Every dependency exactly as locked, each file checked against its hash; a layer of its own, so
# a code change does not reinstall them. setuptools (the build backend) is in the lock too,
# hence no build isolation for Paddock itself.
COPY requirements.lock ./
RUN python3 -m venv /opt/paddock \
    && pip install --require-hashes -r requirements.lock

# Only what `pip install .` needs (.dockerignore keeps the rest out of the build context).
COPY pyproject.toml ./
COPY shared ./shared
COPY web ./web
COPY workers ./workers
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf build ./*.egg-info \
    && useradd --system --uid 10001 --home-dir /var/lib/paddock --create-home paddock

# Not root by default; the worker service runs as root only to reach the Docker socket.
USER paddock
WORKDIR /var/lib/paddock
EXPOSE 3000 5555
# gevent workers (web/gunicorn_conf.py): a waiting long-poll or WebSocket costs no thread.
CMD ["gunicorn", "-c", "python:web.gunicorn_conf", "--bind", "0.0.0.0:3000"]
