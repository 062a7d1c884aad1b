# registry-janitor container image.
#
#   docker build -t registry-janitor .
#   docker run -p 8080:8080 -v janitor-data:/data \
#     -v "$PWD/janitor.yaml:/etc/registry-janitor/janitor.yaml:ro" \
#     -e JANITOR_ADMIN_TOKEN=... -e JANITOR_REGISTRY_TOKEN=... registry-janitor
#
# The config must bind the server to all interfaces (`server.bind: 0.0.0.0:8080`) and keep the
# ledger on the volume (`storage.url: sqlite:////data/janitor.db`). Other commands run the same
# way: `docker run ... registry-janitor check-config --online`.

# Builder: installs the product and its dependencies into a virtualenv. Every dependency ships
# wheels for linux/amd64 and linux/arm64, so no compiler is needed here either.
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# The same install command the README gives operators.
RUN pip install .


# Runtime: the interpreter, the virtualenv, a non-root user. No compilers, no package caches.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="registry-janitor" \
      org.opencontainers.image.description="Untags exactly the container image tags a GitLab pipeline pushed, once their reason to exist ends." \
      org.opencontainers.image.licenses="Apache-2.0"

# A numeric uid/gid so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 janitor \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app \
            --shell /usr/sbin/nologin janitor \
 && mkdir -p /app /data /etc/registry-janitor \
 && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE keeps Python from writing next to its modules, so the image runs
# with a read-only root filesystem; /data (the SQLite ledger) and /tmp are the only writable paths.
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JANITOR_CONFIG=/etc/registry-janitor/janitor.yaml

WORKDIR /app
USER 10001:10001
VOLUME /data
EXPOSE 8080

# slim has no curl: ask /healthz with the interpreter the image already carries.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["registry-janitor"]
CMD ["run"]
