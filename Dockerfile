# The sandbox-broker image deployed by helm/sandbox-broker: `sbx` as entry point, non-root (UID 10001),
# runs with a read-only root filesystem (the chart mounts /tmp and /var/lib/sbx as emptyDir volumes).
#
#   docker build -t ghcr.io/sandbox-broker/sandbox-broker:0.1.0 .
#
# Dependencies come from constraints.txt (the same pins as CI); torch is the CPU build, as in CI: the broker
# process never trains itself, jobs run in the Ray image (`kuberay.image`).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sbx
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY common ./common
COPY broker ./broker
COPY quotas ./quotas
COPY vouchers ./vouchers
COPY datasets ./datasets
COPY privacy ./privacy
RUN /opt/sbx/bin/pip install --extra-index-url https://download.pytorch.org/whl/cpu \
        -c constraints.txt . \
    && /opt/sbx/bin/python -m compileall -q /opt/sbx

FROM python:3.11-slim-bookworm
ENV PATH=/opt/sbx/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    SBX_STATE_DIR=/var/lib/sbx \
    SBX_HOST=0.0.0.0
RUN groupadd --system --gid 10001 sbx \
    && useradd --system --uid 10001 --gid sbx --home-dir /var/lib/sbx --shell /usr/sbin/nologin sbx \
    && install -d -o sbx -g sbx -m 0700 /var/lib/sbx
COPY --from=build /opt/sbx /opt/sbx
USER 10001:10001
WORKDIR /var/lib/sbx
EXPOSE 8750
ENTRYPOINT ["sbx"]
CMD ["serve"]
