"""imap-ingest: turn mail in IMAP folders into tracker tickets."""

__version__ = "0.1.0"
