# Prefect process worker that runs the gradwatch flows (the monitor launches Beam from here).
# Build from the repository root, CPU (default) or CUDA (PyPI's torch wheels carry the CUDA runtime):
#   docker build -f infra/prefect-worker.Dockerfile -t gradwatch-prefect-worker:0.1.0 .
#   docker build -f infra/prefect-worker.Dockerfile --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
#     -t gradwatch-prefect-worker-cuda:0.1.0 .
FROM python:3.11.7-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /opt/gradwatch
COPY pyproject.toml README.md ./
COPY scoring ./scoring
COPY pipelines ./pipelines
COPY flows ./flows
COPY infra/prefect.yaml ./infra/prefect.yaml
# torch first from the chosen index, so the project's requirement does not pull another build; s3fs for MinIO/S3.
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
 && pip install --no-cache-dir . s3fs==2025.10.0
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false
ENTRYPOINT ["prefect", "worker", "start", "--pool", "gradwatch", "--type", "process"]
