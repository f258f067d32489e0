# syntax=docker/dockerfile:1
# smsstream: the worker, the notifier and the topics job in one image (the Helm chart's).
#   docker build -t smsstream:0.1.0 .
# Stage 1 builds wheels for smsstream[rocksdb] and every dependency (compilers only here);
# stage 2 installs them from those wheels alone, and runs as uid 10001 with nothing to write
# but /var/lib/smsstream (the chart mounts the table store there) and /tmp.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY topics ./topics
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels '.[rocksdb]'

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/smsstream/bin:$PATH \
    SMSSTREAM_DATA_DIR=/var/lib/smsstream \
    SMSSTREAM_STORE=rocksdb://
RUN groupadd --system --gid 10001 smsstream \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/smsstream --no-create-home \
      --shell /usr/sbin/nologin smsstream \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/smsstream
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/smsstream \
 && /opt/smsstream/bin/pip install --no-cache-dir --no-index --find-links=/wheels 'smsstream[rocksdb]'
USER 10001:10001
WORKDIR /var/lib/smsstream
# 6066: the worker's web server (/health); 9108: Prometheus /metrics (SMSSTREAM_METRICS_PORT).
EXPOSE 6066 9108
ENTRYPOINT ["smsstream"]
CMD ["worker", "--web-port=6066", "--web-bind=0.0.0.0"]
