# The factflow image for docker-compose.yml's init, projector and api services.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY core core
COPY producer producer
COPY consumer consumer
COPY schemas schemas
COPY query query
COPY pipeline pipeline
RUN pip install --no-cache-dir -c constraints.txt ".[api]"
USER nobody
ENTRYPOINT []
CMD ["factflow", "--help"]
