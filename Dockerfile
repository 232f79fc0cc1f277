# imap-ingest as a service: docker run -v ./config.yaml:/etc/imap-ingest/config.yaml:ro \
#   -v imap-ingest-state:/var/lib/imap-ingest imap-ingest
FROM python:3.11-slim

RUN useradd --system --no-create-home --home-dir /var/lib/imap-ingest --shell /usr/sbin/nologin \
        imap-ingest \
    && mkdir -p /var/lib/imap-ingest /etc/imap-ingest \
    && chown imap-ingest:imap-ingest /var/lib/imap-ingest

COPY . /src
RUN pip install --no-cache-dir "/src[postgres]" && rm -rf /src

# The config file and the state (ledger, folder locks) live outside the image. Every key of
# the file can be overridden with IMAP_INGEST_<KEY>__<KEY> variables, secrets included.
ENV IMAP_INGEST_CONFIG=/etc/imap-ingest/config.yaml \
    IMAP_INGEST_STATE_DIR=/var/lib/imap-ingest \
    IMAP_INGEST_HTTP__LISTEN=0.0.0.0:9464
VOLUME /var/lib/imap-ingest
EXPOSE 9464

USER imap-ingest
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["imap-ingest"]
CMD ["run"]
