"""`tune`: an Optuna search over a fit's settings, scored on the validation split.

One module per job: `space` (the search space and its YAML file `space.yaml`), `pruning` (the
Lightning callback that reports `val/rmse` to a trial and stops bad ones), `objective` (a trial as
one `fit` through the CLI), `study` (the SQLite-backed, resumable study and its run), and the
reports: `best_config` (the best settings as a config that composes), `reports` (the trials
table) and `plots` (the PNG); `command` is the command line.
"""
