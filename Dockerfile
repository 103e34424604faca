# One image for every Paddock service of compose.yaml (web, worker, control, flower); the
# command picks the role. Sandbox images are not built here: `make images` builds them on each
# sandbox host (debootstrap + docker import, no registry), because the host worker starts
# sandboxes on that host's Docker engine.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PADDOCK_DATA_DIR=/var/lib/paddock

WORKDIR /app
# Only what `pip install .` needs, so the build context's .venv, .paddock and tests never matter.
COPY pyproject.toml ./
COPY shared ./shared
COPY web ./web
COPY workers ./workers
# e2fsprogs and mount: the host worker makes and mounts each sandbox's capped storage.
RUN apt-get update && apt-get install -y --no-install-recommends e2fsprogs mount \
    && rm -rf /var/lib/apt/lists/*
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/paddock --create-home paddock

# Not root by default; the worker service runs as root only to reach the Docker socket.
USER paddock
EXPOSE 3000 5555
# gevent workers (web/gunicorn_conf.py): a waiting long-poll or WebSocket costs no thread.
CMD ["gunicorn", "-c", "python:web.gunicorn_conf", "--bind", "0.0.0.0:3000", "web.app:create_app()"]
