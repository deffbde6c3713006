# syntax=docker/dockerfile:1.7
#
# Sir Convert-a-Lot: one runtime image for every profile (prod, eval, ...); the
# profile is chosen by the command (`run --profile NAME`), see compose.yaml.
#
# The GPU runtime is chosen when building, because PyTorch ships one wheel per
# runtime. ROCm by default; ops/compose --nvidia builds the CUDA image.
# TORCH_INDEX is the PyTorch wheel index you install from (the one PyTorch's
# "Get started" page names, or your mirror of it), without the runtime part;
# TORCH_RUNTIME is that part (rocm6.4, cu128):
#
#   docker build --build-arg TORCH_INDEX="$TORCH_INDEX" --build-arg TORCH_RUNTIME=rocm6.4 \
#                --build-arg SIR_CONVERT_A_LOT_SERVICE_REVISION=$(git rev-parse HEAD) .
#
# Models are never downloaded, neither here nor at run time: mount a directory
# filled by `sir-convert-a-lot models fetch` read-only at /models.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_INDEX
ARG TORCH_RUNTIME=rocm6.4
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/sir-convert-a-lot/.venv
ENV PATH=/opt/sir-convert-a-lot/.venv/bin:$PATH

# torch and torchvision first, both from the runtime's index; then pin what was
# installed so that resolving the project cannot swap in another build of torch
# from PyPI (docling pulls torchvision, which would pull a CUDA torch).
RUN test -n "${TORCH_INDEX}" \
      || { echo "set the build argument TORCH_INDEX (the PyTorch wheel index, docs/runbook.md)" >&2; exit 2; } \
 && pip install --index-url "${TORCH_INDEX%/}/${TORCH_RUNTIME}" "torch<=2.14.1" torchvision \
 && pip freeze | grep -E '^(torch|torchvision)==' > /opt/torch-constraints.txt \
 && cat /opt/torch-constraints.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY converters ./converters
COPY daemon ./daemon
RUN pip install --constraint /opt/torch-constraints.txt ".[engine]" \
 && pip check

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

# WeasyPrint: pango (text layout), harfbuzz-subset (font subsetting for PDF
# output), fontconfig and real fonts (without them every glyph is a box).
# pandoc comes with the pypandoc-binary wheel; docling, rapidocr and pdf2docx
# bring their own native libraries in their wheels.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        libpango-1.0-0 \
        libpangoft2-1.0-0 \
        libharfbuzz0b \
        libharfbuzz-subset0 \
        libfontconfig1 \
        fonts-dejavu-core \
        fonts-liberation2 \
        fonts-noto-core \
        shared-mime-info \
        ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The non-root user the daemon runs as. "video" and "render" own the ROCm nodes
# /dev/kfd and /dev/dri/renderD*; compose adds the host's numeric GIDs as well,
# since they differ between hosts (group_add in compose.yaml).
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" sir-convert-a-lot \
 && (getent group render >/dev/null || groupadd --system render) \
 && useradd --system --uid "${APP_UID}" --gid sir-convert-a-lot \
        --groups video,render --home-dir /var/cache/sir-convert-a-lot \
        --shell /usr/sbin/nologin sir-convert-a-lot \
 && install -d -o sir-convert-a-lot -g sir-convert-a-lot -m 0770 \
        /data/prod /data/eval /var/cache/sir-convert-a-lot \
 && install -d -m 0755 /models /etc/sir-convert-a-lot

COPY --from=build /opt/sir-convert-a-lot/.venv /opt/sir-convert-a-lot/.venv

# Profiles inside the container. Each container mounts its own volume at its
# profile's data root. The listener binds all interfaces inside the container's
# own network namespace; compose publishes it on the host's 127.0.0.1 only.
COPY <<'EOF' /etc/sir-convert-a-lot/config.toml
[profiles.prod]
data_root = "/data/prod"
http_host = "0.0.0.0"
allow_non_loopback = true
http_port = 8085
gpu_policy = "required"
models_dir = "/models"

[profiles.eval]
data_root = "/data/eval"
http_host = "0.0.0.0"
allow_non_loopback = true
http_port = 8086
gpu_policy = "preferred"
models_dir = "/models"
EOF

ARG SIR_CONVERT_A_LOT_SERVICE_REVISION=unknown
LABEL org.opencontainers.image.title="sir-convert-a-lot" \
      org.opencontainers.image.description="Hot-folder document conversion daemon" \
      org.opencontainers.image.revision="${SIR_CONVERT_A_LOT_SERVICE_REVISION}"

ENV PATH=/opt/sir-convert-a-lot/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/cache/sir-convert-a-lot \
    XDG_CACHE_HOME=/var/cache/sir-convert-a-lot \
    MIOPEN_USER_DB_PATH=/var/cache/sir-convert-a-lot/miopen \
    MIOPEN_CUSTOM_CACHE_DIR=/var/cache/sir-convert-a-lot/miopen \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    SIR_CONVERT_A_LOT_CONFIG=/etc/sir-convert-a-lot/config.toml \
    SIR_CONVERT_A_LOT_MODELS_DIR=/models \
    SIR_CONVERT_A_LOT_SERVICE_REVISION=${SIR_CONVERT_A_LOT_SERVICE_REVISION}

VOLUME ["/models"]
USER sir-convert-a-lot:sir-convert-a-lot
WORKDIR /var/cache/sir-convert-a-lot
EXPOSE 8085 8086
# SIGTERM drains: in-flight jobs finish for up to drain_seconds (60 s), then
# the daemon exits 0. compose.yaml's stop_grace_period allows for that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sir-convert-a-lot"]
CMD ["run", "--profile", "prod"]
