# The platform image: the official Airflow 3.3.2 image plus the llmops package, installed exactly as
# uv.lock pins it (hash-checked). Used by every Airflow service, the MLflow server and the simulator in
# docker-compose.yml.
FROM apache/airflow:3.3.2-python3.11

ENV LITELLM_LOCAL_MODEL_COST_MAP=True \
    MLFLOW_DISABLE_TELEMETRY=true \
    LLMOPS_HOME=/opt/llmops \
    PIP_NO_CACHE_DIR=1

USER root
RUN mkdir -p /opt/llmops/data && chown -R airflow:0 /opt/llmops
USER airflow
WORKDIR /opt/llmops

# 1. uv itself, from the repository's hash-pinned requirements file
COPY --chown=airflow:0 requirements-uv.txt /tmp/requirements-uv.txt
RUN pip install --user --require-hashes -r /tmp/requirements-uv.txt

# 2. the locked runtime dependencies (no dev group), hash-checked
COPY --chown=airflow:0 pyproject.toml uv.lock README.md /opt/llmops/
RUN python -m uv export --frozen --no-dev --no-emit-project --format requirements-txt -o /tmp/requirements.txt \
 && pip install --require-hashes -r /tmp/requirements.txt

# 3. the package itself (its dependencies are already there)
COPY --chown=airflow:0 llmops /opt/llmops/llmops
RUN pip install --no-deps /opt/llmops

# dags/, plugins/, prompts/ and llmops.yaml are mounted by docker-compose.yml (edit without rebuilding);
# copy them too so the image also runs on its own.
COPY --chown=airflow:0 dags /opt/llmops/dags
COPY --chown=airflow:0 plugins /opt/llmops/plugins
COPY --chown=airflow:0 prompts /opt/llmops/prompts
COPY --chown=airflow:0 llmops.yaml /opt/llmops/llmops.yaml
