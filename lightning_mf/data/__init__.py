"""A prepared dataset folder: its contract (`schema`, `batch`) and its streaming into training
(`stream`, `datamodule`)."""
