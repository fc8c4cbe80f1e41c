"""The worker: `orderflow worker`, an arq process that stores orders from the ingest queue."""
