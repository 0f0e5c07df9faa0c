# Beam SDK worker (CPU) for Flink/Spark portable runners and Dataflow: gradwatch plus a CPU build of torch.
# Build from the repository root:  docker build -f infra/beam-worker-cpu.Dockerfile -t gradwatch-beam-worker:0.1.0 .
# The SDK image's Beam version must match the launcher's (pyproject pins apache-beam >=2.60,<3).
FROM apache/beam_python3.11_sdk:2.77.0

WORKDIR /opt/gradwatch
COPY pyproject.toml README.md ./
COPY scoring ./scoring
COPY pipelines ./pipelines
COPY flows ./flows
# CPU wheel first, so the project's torch requirement does not pull a CUDA build.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir .
ENTRYPOINT ["/opt/apache/beam/boot"]
