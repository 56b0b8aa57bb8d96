# One image for the API, the workers and migrations. Inference runs on LiteRT,
# so TensorFlow is not installed here (build with --build-arg EXTRAS=serve,train
# for the Keras/GPU backend).
FROM python:3.11-slim

ARG EXTRAS=serve
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HEMATOVISION_VAR_DIR=/data/var HEMATOVISION_STORAGE_ROOT=/data/storage

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY pipeline ./pipeline
COPY db ./db
COPY training ./training
COPY models ./models
RUN pip install ".[${EXTRAS}]" && useradd --create-home --uid 1000 hematovision \
    && mkdir -p /data/var /data/storage && chown -R hematovision /data
USER hematovision
ENV HEMATOVISION_MODEL_DIR=/app/models/hematovision-mnv2-cc-160
EXPOSE 5000
CMD ["gunicorn", "--workers", "2", "--threads", "4", "--bind", "0.0.0.0:5000", "api.wsgi:app"]
