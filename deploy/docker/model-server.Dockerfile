# The bundled model server (`wardgate model-server`) on an NVIDIA GPU: torch CUDA build, torchao int8
# weight-only quantisation (the path `--quantize int8 --device cuda` takes) and bitsandbytes. Build from
# the repository root:
#   docker build -f deploy/docker/model-server.Dockerfile -t wardgate-model-server:0.1.0 .
# The model directory is mounted at /models/current (read-only); nothing is downloaded at run time.

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12=3.12.3-* python3.12-venv=3.12.3-* \
    && rm -rf /var/lib/apt/lists/*
# The CUDA build of the same torch the CPU image pins, then the int8 libraries.
RUN python3.12 -m venv /opt/wardgate \
    && /opt/wardgate/bin/pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0 \
    && /opt/wardgate/bin/pip install torchao==0.13.0 bitsandbytes==0.47.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY policies ./policies
COPY filters ./filters
COPY classifiers ./classifiers
COPY privacy ./privacy
RUN /opt/wardgate/bin/pip install "/src[gpu]"
RUN useradd --no-log-init --system --uid 10002 --user-group --home-dir /var/lib/model-server --shell /usr/sbin/nologin model \
    && mkdir -p /var/lib/model-server \
    && chown model:model /var/lib/model-server
ENV PATH=/opt/wardgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/model-server \
    HF_HUB_OFFLINE=1
USER 10002:10002
WORKDIR /var/lib/model-server
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["wardgate", "model-server"]
# Loopback only: in the Kubernetes pod only the gateway beside it can reach it; compose overrides --host.
CMD ["--model", "/models/current", "--device", "cuda", "--quantize", "int8", "--host", "127.0.0.1", "--port", "8000"]
