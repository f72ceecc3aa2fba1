# The MLflow tracking server with the PostgreSQL driver built in (no pip install at container start).
# Base image pinned by tag: no digest of ghcr.io/mlflow/mlflow:v3.17.2 could be looked up when this was
# written; pin it yourself with `docker buildx imagetools inspect ghcr.io/mlflow/mlflow:v3.17.2` and
# FROM ghcr.io/mlflow/mlflow:v3.17.2@sha256:<digest>.
FROM ghcr.io/mlflow/mlflow:v3.17.2

RUN pip install --no-cache-dir psycopg2-binary==2.9.13 \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts && chown mlflow /mlartifacts

# the artifacts volume is initialized from /mlartifacts, owned by this user
USER mlflow
