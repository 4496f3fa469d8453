"""`python -m lightning_mf serve`: the HTTP API (`server`) until SIGTERM or Ctrl-C, then every process gone.

LitServe runs its HTTP server and each endpoint's worker in processes of their own. On Ctrl-C it
stops them all; SIGTERM (what `kill`, Docker and Kubernetes send) would end only this process and
orphan the rest, so it is turned into the same KeyboardInterrupt. The workers ignore SIGINT (a
terminal's Ctrl-C reaches the whole process group): this process stops them, in order. Whatever child is still alive
afterwards (a worker that failed its setup, say) is terminated, then killed, before exiting.
The checkpoint is checked here first, so a wrong path ends with a message and status 2 rather
than with a worker's traceback.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from jsonargparse import ArgumentParser

from lightning_mf.errors import DataError


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m lightning_mf serve", description=(
        "Serve a trained model over HTTP (LitServe): POST /predict {\"pairs\": [[user, item], ...]}, POST /recommend "
        "{\"user\": id or [[item, rating], ...], \"k\": 10}, GET /health. SIGTERM or Ctrl-C stops it."))
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint (.ckpt) or export folder.")
    parser.add_argument("--data_dir", type=str | None, default=None, help="The dataset folder it was trained on; "
                        "unset: the one the checkpoint names.")
    parser.add_argument("--ratings", type=str | None, default=None, help="Ratings of new users and items to fold in "
                        "at start (as `recommend --ratings`).")
    parser.add_argument("--host", type=str, default="127.0.0.1", help="127.0.0.1 (this machine only), 0.0.0.0 or ::.")
    parser.add_argument("--port", type=int, default=8000, help="Port, 1024 to 65535.")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto (CUDA when available), cpu or cuda.")
    parser.add_argument("--workers_per_device", type=int, default=1, help="Worker processes per endpoint and device.")
    parser.add_argument("--api_servers", type=int, default=1, help="HTTP server processes.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per worker.")
    parser.add_argument("--max_pairs", type=int, default=10_000, help="Most pairs (or ratings) in one request.")
    parser.add_argument("--max_k", type=int, default=1_000, help="Largest k of /recommend.")
    parser.add_argument("--max_body_kb", type=int, default=1024, help="Largest request body, in KiB (413 above).")
    parser.add_argument("--timeout", type=float, default=30.0, help="Seconds a request may wait for a worker (504 after).")
    parser.add_argument("--log_level", type=str, default="info", help="critical, error, warning, info or debug.")
    return parser


def _check_model(ckpt_path: str, data_dir: str | None) -> None:
    """Fail fast, in this process, on what would fail in every worker."""
    from lightning_mf.inference.export import ITEM_FACTORS, MODEL_FILE, USER_FACTORS, is_export

    path = Path(ckpt_path)
    if path.is_dir():
        if not is_export(path) or not (path / USER_FACTORS).is_file() or not (path / ITEM_FACTORS).is_file():
            raise DataError(f"{path} is not an export folder ({MODEL_FILE} and the factor files are needed)")
        return
    from lightning_mf.inference.checkpoint_loading import dataset_folder, read_checkpoint, rebuild_model

    checkpoint = read_checkpoint(path)
    dataset_folder(checkpoint, path, data_dir)
    rebuild_model(checkpoint, path)


_MAIN_PID = os.getpid()
_stopping: list[int] = []  # the stop signals received


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _MAIN_PID:
        # A forked HTTP server process inherits this handler; uvicorn re-raises the signal when it
        # has shut down, which must then end that process as the default action would.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _stopping.append(signum)
    for name in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the shutdown short
        signal.signal(name, signal.SIG_IGN)
    raise KeyboardInterrupt


def _stop_children(grace: float = 5.0) -> None:
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(grace)
        if child.is_alive():
            child.kill()
            child.join(grace)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or Ctrl-C; returns the exit status."""
    config = build_parser().parse_args(argv).as_dict()
    for name, low in (("workers_per_device", 1), ("api_servers", 1), ("threads", 1), ("max_pairs", 1),
                      ("max_k", 1), ("max_body_kb", 1)):
        if config[name] < low:
            raise DataError(f"--{name} must be >= {low}, got {config[name]}")
    if not 1024 <= config["port"] <= 65535:
        raise DataError(f"--port must be between 1024 and 65535, got {config['port']}")
    if config["host"] not in ("127.0.0.1", "0.0.0.0", "::"):
        raise DataError(f"--host must be 127.0.0.1, 0.0.0.0 or :: (LitServe binds only these), got {config['host']!r}")
    _check_model(config["ckpt_path"], config["data_dir"])
    from lightning_mf.inference.server import build_server

    server = build_server(config["ckpt_path"], config["data_dir"], config["ratings"], config["accelerator"],
                          config["workers_per_device"], config["max_pairs"], config["max_k"],
                          config["max_body_kb"] * 1024, config["threads"], config["timeout"])
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        server.run(host=config["host"], port=config["port"], num_api_servers=config["api_servers"],
                   log_level=config["log_level"], generate_client_file=False)
    except KeyboardInterrupt:
        pass
    except (EOFError, ConnectionError) as error:
        # LitServe's monitor shut everything down (a worker died) while this process waited on its manager.
        if not _stopping:
            print(f"error: the server stopped: a worker process died ({type(error).__name__}); see the log above",
                  file=sys.stderr)
            return 1
    except RuntimeError as error:  # LitServe: a worker failed its setup (its traceback is logged above)
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        _stop_children()
    return 0
