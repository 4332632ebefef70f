# pgsluice: a one-shot PostgreSQL migration job.
#
#   docker build -t pgsluice .
#   docker build --build-arg BASE_IMAGE=pgsluice-base:trixie -t pgsluice .   # a local base (no registry)
#
# Behind a TLS-intercepting proxy, put the proxy's CA certificate at ./extra-ca.crt
# in the build context: the build stage trusts it for pip, nothing else changes, and it
# does not reach the final image. Without the file the build is the default one.
ARG BASE_IMAGE=python:3.13-slim-trixie

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# The bracket makes the CA file optional: COPY needs at least one match, pyproject.toml is it.
COPY pyproject.toml README.md extra-ca.cr[t] /src/
RUN if [ -f /src/extra-ca.crt ]; then cat /etc/ssl/certs/ca-certificates.crt /src/extra-ca.crt > /tmp/ca.pem \
      && echo "PIP_CERT=/tmp/ca.pem" > /tmp/pip.env; else : > /tmp/pip.env; fi \
    && apt-get update && apt-get install -y --no-install-recommends binutils \
    && python3 -m venv /opt/venv
COPY src/ /src/src/
RUN set -a && . /tmp/pip.env && set +a \
    && /opt/venv/bin/pip install --no-compile /src \
    && /opt/venv/bin/pip uninstall -y pip \
    # Wheels ship debug symbols (pglast's parser: 27 MB, 8 MB stripped) and C sources.
    && find /opt/venv -name '*.so' -exec strip --strip-unneeded {} + \
    && find /opt/venv -name '*.c' -delete \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib

# pg_dump and pg_restore without postgresql-client's Perl wrappers (50 MB of Perl).
# PG_MAJOR empty: the distribution's client (trixie: 17). PG_MAJOR=N: postgresql-client-N
# from the distribution when it has that major, else from the PostgreSQL project's apt
# repository (apt.postgresql.org must then be reachable from the build).
FROM ${BASE_IMAGE} AS pgclient
ARG PG_MAJOR=
RUN set -eux; export DEBIAN_FRONTEND=noninteractive; apt-get update; \
    if [ -z "${PG_MAJOR}" ]; then \
      apt-get install -y --no-install-recommends postgresql-client; \
    elif apt-cache show "postgresql-client-${PG_MAJOR}" >/dev/null 2>&1; then \
      apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    else \
      apt-get install -y --no-install-recommends curl ca-certificates gnupg; \
      curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc | gpg --dearmor -o /usr/share/keyrings/pgdg.gpg; \
      . /etc/os-release; \
      echo "deb [signed-by=/usr/share/keyrings/pgdg.gpg] http://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
      apt-get update; apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    fi; \
    mkdir -p /out/bin; \
    bindir=$(ls -d /usr/lib/postgresql/${PG_MAJOR:-*}/bin | sort -V | tail -n 1); \
    for tool in pg_dump pg_restore psql; do cp "$bindir/$tool" /out/bin/; done; \
    cp -P /usr/lib/x86_64-linux-gnu/libpq.so.5* /out/ 2>/dev/null || cp -P /usr/lib/*/libpq.so.5* /out/

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pgsluice" \
      org.opencontainers.image.description="One-shot PostgreSQL migration job: wait, lock, plan, back up, apply, report" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/pgsluice/pgsluice"
RUN set -eux; export DEBIAN_FRONTEND=noninteractive; apt-get update; \
    # libpq5 for its dependencies (Kerberos, LDAP); the libpq of the copied client replaces it.
    apt-get install -y --no-install-recommends tini ca-certificates libpq5 libzstd1 liblz4-1 zlib1g libreadline8t64; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* /usr/share/doc/* /usr/share/man/*; \
    # No pip in the final image (the python:slim base ships one).
    rm -rf /usr/local/lib/python3*/site-packages/pip* /usr/local/bin/pip* /usr/share/python-wheels; \
    # The group first, with the uid's number: `useradd --user-group` would give it a system GID
    # (999) and leave 10001, the GID the image and the chart run as, without a name.
    groupadd --system --gid 10001 pgsluice; \
    useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin pgsluice
COPY --from=pgclient /out/bin/ /usr/local/bin/
COPY --from=pgclient /out/libpq.so.5* /usr/local/lib/pgsluice/
COPY --from=build /opt/venv /opt/venv
COPY entrypoint.py /app/entrypoint.py
COPY migrations/ /migrations/
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=/usr/local/lib/pgsluice \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PGSLUICE_MIGRATIONS_DIR=/migrations
WORKDIR /tmp
USER 10001:10001
# tini is PID 1 and forwards SIGTERM to the whole process group: Python and pg_dump.
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/opt/venv/bin/python", "/app/entrypoint.py"]
CMD ["migrate"]
