# wardgate gateway, CPU only. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t wardgate:0.1.0 .
# Runs as a non-root user with a read-only root filesystem: the only writable paths it needs are
# $WARDGATE_STATE_DIR (policy history, local audit log, spill files) and /tmp.

FROM python:3.12.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned, from the CPU index: any looser requirement would pull the CUDA build (gigabytes).
RUN python -m venv /opt/wardgate \
    && /opt/wardgate/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
COPY filters ./filters
COPY classifiers ./classifiers
COPY privacy ./privacy
RUN /opt/wardgate/bin/pip install /src
# The shipped classifier's int8 graph is built into the image (about 20 s), so that a container with a
# read-only root filesystem never has to build it at start.
ENV WARDGATE_CLASSIFIER_CACHE=/opt/wardgate/classifier-cache
RUN /opt/wardgate/bin/python -c "from classifiers.export import onnx_graph; from classifiers.registry import BUILTIN_DIR; print(onnx_graph(BUILTIN_DIR, 'int8'))"

FROM python:3.12.11-slim-bookworm
RUN useradd --no-log-init --system --uid 10001 --user-group --home-dir /var/lib/wardgate --shell /usr/sbin/nologin wardgate \
    && mkdir -p /var/lib/wardgate \
    && chown wardgate:wardgate /var/lib/wardgate
COPY --from=build /opt/wardgate /opt/wardgate
ENV PATH=/opt/wardgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/wardgate \
    HF_HUB_OFFLINE=1 \
    WARDGATE_CLASSIFIER_CACHE=/opt/wardgate/classifier-cache \
    WARDGATE_STATE_DIR=/var/lib/wardgate \
    WARDGATE_HOST=0.0.0.0 \
    WARDGATE_PORT=8080
USER 10001:10001
WORKDIR /var/lib/wardgate
EXPOSE 8080
# No curl in a slim image: the interpreter that runs the gateway does the probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["wardgate", "serve"]
