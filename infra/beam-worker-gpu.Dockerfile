# Beam SDK worker for GPU machines (Dataflow with worker_accelerator, or Flink task managers with GPUs).
# PyPI's torch wheels carry the CUDA runtime; the NVIDIA driver comes from the host
# (Dataflow: dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver).
# Build from the repository root:  docker build -f infra/beam-worker-gpu.Dockerfile -t gradwatch-beam-worker-gpu:0.1.0 .
# Run the pipeline with --device cuda --large-model so each machine loads one model copy per GPU, and with
# --decoder device --precision fp16: torchvision decodes JPEGs with nvJPEG, where host decoding would bound the GPU.
FROM apache/beam_python3.11_sdk:2.78.0

WORKDIR /opt/gradwatch
COPY pyproject.toml README.md infra/beam-worker-requirements.txt ./
COPY scoring ./scoring
COPY pipelines ./pipelines
# torchvision 0.28 is the release built against torch 2.13; any other pairing fails to load its operators.
# Only what workers import (beam-worker-requirements.txt): flows/ and its MLflow, Prefect and GX run on the launcher.
RUN pip install --no-cache-dir torch==2.13.0 torchvision==0.28.* \
 && pip install --no-cache-dir -r beam-worker-requirements.txt \
 && pip install --no-cache-dir --no-deps .
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
ENTRYPOINT ["/opt/apache/beam/boot"]
