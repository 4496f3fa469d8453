"""Using a trained model: loading it without Lightning (`loading`), predictions and recommendations by
raw id (`trained_model`), fold-in of new users and items (`fold_in`, `ridge`), `export`, the command
lines (`commands`), the HTTP server (`server`, `serve_command`) and `predict`'s Parquet writer."""
