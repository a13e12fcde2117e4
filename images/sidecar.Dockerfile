# syntax=docker/dockerfile:1
# The tinyraft sidecar: image tinyraft/tinyraft:<version>, the operator's default
# sidecar image (TINYRAFT_SIDECAR_IMAGE). Build from the repository root:
#
#   docker build -f images/sidecar.Dockerfile -t tinyraft/tinyraft:0.1.0 .
#
# The operator (operator/tinyraft_operator/builders.py) runs it as `tinyraft sidecar`
# with UID/GID 65532, a read-only root filesystem and the data volume mounted at
# /var/lib/tinyraft; gRPC on 7000, metrics on 9100. The image agrees with all of that
# (tests/test_images.py checks it against the operator's code). It is also the admin
# CLI: `docker run --rm tinyraft/tinyraft:0.1.0 status --addr HOST:7000`.
#
# Base: pinned to an exact tag, the same in all three images. Its digest could not be
# resolved where this file was written: pin it as well when you can
# (FROM python:3.13.9-slim-bookworm@sha256:<digest>), and let Renovate/Dependabot bump both.

FROM python:3.13.9-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY operator ./operator
# A wheel of this repository, installed into a venv without pip; only the venv is
# copied into the final stage. Every dependency ships manylinux wheels: no compiler.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/tinyraft \
 && python -m pip --python /opt/tinyraft/bin/python install /wheels/tinyraft-*.whl

FROM python:3.13.9-slim-bookworm
# SQLite writes its temporary files (sorts, statement journals) under SQLITE_TMPDIR;
# the root filesystem is read-only in the pod, so point it at the data volume.
ENV PATH=/opt/tinyraft/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SQLITE_TMPDIR=/var/lib/tinyraft
# The same numeric UID/GID as the pod securityContext the operator sets (runAsUser,
# runAsGroup, fsGroup); the data dir exists and is owned by it for `docker run` too.
RUN groupadd --system --gid 65532 tinyraft \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /var/lib/tinyraft --shell /usr/sbin/nologin tinyraft \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/tinyraft
COPY --from=builder /opt/tinyraft /opt/tinyraft
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/tinyraft/tinyraft
LABEL org.opencontainers.image.title="tinyraft" \
      org.opencontainers.image.description="tinyraft Raft sidecar and admin CLI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
# 7000: peer, Caller and Admin gRPC (and gRPC health); 9100: Prometheus metrics.
EXPOSE 7000 9100
ENTRYPOINT ["tinyraft"]
CMD ["sidecar"]
