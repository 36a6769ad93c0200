# The kvsched image (extender, and later controller and agent): kvsched is the entrypoint.
#   docker build -t ghcr.io/kvsched/kvsched:0.1.0 .
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scheduler ./scheduler
COPY topology ./topology
RUN pip install --no-cache-dir '.[agent]' && rm -rf /src
USER 65532:65532
ENTRYPOINT ["kvsched"]
