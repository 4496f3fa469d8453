"""Experiment series and their reports: run a folder of configs (`series`), read the TensorBoard
events back (`tb_events`) and write tables and learning curves (`report`, `plots`)."""
