"""Code both the receiver (`ingest`) and the worker (`worker`) import: schemas, settings, db, sql, logging."""
