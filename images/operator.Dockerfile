# syntax=docker/dockerfile:1
# The tinyraft operator: image tinyraft/operator:<version>. Build from the repository root:
#
#   docker build -f images/operator.Dockerfile -t tinyraft/operator:0.1.0 .
#
# Runs `python -m kopf run -m tinyraft_operator --all-namespaces`, as the tests start it
# (tests/k8s_fixture.py), with kopf's liveness endpoint on 8080 and the operator's
# Prometheus metrics on 9200 (TINYRAFT_OPERATOR_METRICS_ADDR). Kubernetes `args`
# replace the default arguments: the Helm chart's Deployment gives its own (kopf's
# options) and keeps this entry point (tests/test_chart.py runs the two together).
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
# The wheel with the `operator` extra (kopf, kubernetes) in a venv without pip.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/tinyraft \
 && python -m pip --python /opt/tinyraft/bin/python install \
      "$(echo /wheels/tinyraft-*.whl)[operator]"

FROM python:3.13.9-slim-bookworm
ENV PATH=/opt/tinyraft/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 65532 tinyraft \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin tinyraft
COPY --from=builder /opt/tinyraft /opt/tinyraft
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/tinyraft/tinyraft
LABEL org.opencontainers.image.title="tinyraft-operator" \
      org.opencontainers.image.description="Kubernetes operator for RaftCluster resources (tinyraft.dev/v1alpha1)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
# 9200: the operator's Prometheus metrics; 8080: kopf's liveness endpoint (/healthz).
EXPOSE 9200 8080
ENTRYPOINT ["python", "-m", "kopf", "run", "-m", "tinyraft_operator"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
