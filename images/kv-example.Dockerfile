# syntax=docker/dockerfile:1
# The example kv Module: image tinyraft/kv-example:<version>. Build from the repository root:
#
#   docker build -f images/kv-example.Dockerfile -t tinyraft/kv-example:0.1.0 .
#
# The app container of examples/kubernetes/kv-raftcluster.yaml: it serves the Module
# gRPC API on the pod's loopback, 127.0.0.1:7100 (spec.module.port), where the sidecar
# in the same pod calls it; nothing outside the pod can reach it. It holds the whole
# tinyraft package, so it is also the image of the client pod
# (examples/kubernetes/kv-client.yaml: `python script.py` with the Caller SDK).
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
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/tinyraft \
 && python -m pip --python /opt/tinyraft/bin/python install /wheels/tinyraft-*.whl

FROM python:3.13.9-slim-bookworm
ENV PATH=/opt/tinyraft/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The UID/GID the operator gives every container of a RaftCluster pod.
RUN groupadd --system --gid 65532 tinyraft \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin tinyraft
COPY --from=builder /opt/tinyraft /opt/tinyraft
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/tinyraft/tinyraft
LABEL org.opencontainers.image.title="tinyraft-kv-example" \
      org.opencontainers.image.description="tinyraft's example replicated key-value Module, and a Caller SDK client" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
# The Module port (documentation only: it listens on the pod's loopback).
EXPOSE 7100
ENTRYPOINT ["tinyraft"]
CMD ["example", "kv", "--listen", "127.0.0.1:7100"]
