"""Dataset preparation (raw files -> Parquet folder) and streaming (Parquet folder -> batches)."""
