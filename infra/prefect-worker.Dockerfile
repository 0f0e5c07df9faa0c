# Prefect process worker that runs the gradwatch flows (the monitor launches Beam from here).
# Build from the repository root:  docker build -f infra/prefect-worker.Dockerfile -t gradwatch-prefect-worker:0.1.0 .
FROM python:3.11.7-slim-bookworm

WORKDIR /opt/gradwatch
COPY pyproject.toml README.md ./
COPY scoring ./scoring
COPY pipelines ./pipelines
COPY flows ./flows
COPY infra/prefect.yaml ./infra/prefect.yaml
# CPU wheel first, so the project's torch requirement does not pull a CUDA build; s3fs for MinIO/S3 sources.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir . s3fs==2025.10.0
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false
ENTRYPOINT ["prefect", "worker", "start", "--pool", "gradwatch", "--type", "process"]
