# MLflow tracking server with Postgres and S3 (MinIO) support, at the version gradwatch pins.
FROM python:3.11.7-slim-bookworm
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.10 boto3==1.40.40
EXPOSE 5000
