# imap-ingest in a container (a fuller image, with health checks, comes with the service work).
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/imap-ingest imap-ingest
COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src
USER imap-ingest
ENV IMAP_INGEST_CONFIG=/etc/imap-ingest/config.yaml \
    IMAP_INGEST_STATE_DIR=/var/lib/imap-ingest
VOLUME /var/lib/imap-ingest
ENTRYPOINT ["imap-ingest"]
CMD ["run"]
