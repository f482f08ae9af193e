# syntax=docker/dockerfile:1
# One image for every role: `conveyor api | worker --queue Q | beat | exporter`.
# Runs as UID 10001 with a read-only root filesystem; the chart mounts emptyDirs at /tmp
# (metrics scratch and heartbeat files).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/conveyor
COPY pyproject.toml README.md ./
COPY services ./services
RUN /opt/conveyor/bin/pip install --no-compile . \
    && /opt/conveyor/bin/python -m compileall -q /opt/conveyor/lib

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="Conveyor job platform: API, workers, beat, exporter" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/conveyor/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEYOR_LOG_FORMAT=json
RUN groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin conveyor
COPY --from=build /opt/conveyor /opt/conveyor
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 9808 9809 9810 9811
# Exec form: `conveyor` itself is PID 1, so SIGTERM reaches gunicorn, Celery and beat with no
# shell in between (each installs its own handler). Kubernetes probes replace HEALTHCHECK.
ENTRYPOINT ["conveyor"]
CMD ["api"]
