# Beam SDK worker (CPU) for Flink/Spark portable runners and Dataflow: gradwatch plus a CPU build of torch.
# Build from the repository root:  docker build -f infra/beam-worker-cpu.Dockerfile -t gradwatch-beam-worker:0.1.0 .
# The SDK image's Beam version must be the one pyproject pins (tests/flows/test_infra.py holds them equal).
FROM apache/beam_python3.11_sdk:2.78.0

WORKDIR /opt/gradwatch
COPY pyproject.toml README.md infra/beam-worker-requirements.txt ./
COPY scoring ./scoring
COPY pipelines ./pipelines
# CPU wheel first, so the requirements' torch range is met and does not pull a CUDA build. Only what workers
# import (beam-worker-requirements.txt): flows/ and its MLflow, Prefect and GX run on the launcher.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir -r beam-worker-requirements.txt \
 && pip install --no-cache-dir --no-deps .
ENTRYPOINT ["/opt/apache/beam/boot"]
