"""Raw ratings -> a dataset folder: reading every supported format, checking it, indexing,
filtering, splitting and writing Parquet (`pipeline.prepare_dataset`, `python -m lightning_mf prepare`)."""
