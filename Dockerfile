# The inferwatch image: its commands (serve, proxy, inbox, batch, load...) are the CLI's.
# Build from the repository's root: docker build -t inferwatch:0.1.0 .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INFERWATCH_CACHE_DIR=/opt/inferwatch/cache

WORKDIR /opt/inferwatch/src
COPY pyproject.toml README.md ./
COPY src ./src
# The digits model is trained at build time, so a container starts serving at once and
# needs no writable cache (Kubernetes runs it with a read-only root file system).
# DL3013: the package installed is this checkout; pyproject.toml bounds its dependencies.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[demo,fast]" \
    && python -c "from inferwatch.models.digits import DigitsModel; DigitsModel()" \
    && useradd --system --uid 10001 --no-create-home inferwatch

USER 10001
WORKDIR /tmp
EXPOSE 8080 8090
ENTRYPOINT ["inferwatch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
