"""`serve`: a real server in a subprocess on 127.0.0.1, every endpoint, every kind of bad request, SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import lightning_mf
from inference_helpers import make_model_checkpoint, make_string_id_dataset

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, from /proc (parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, object]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = raw if raw is not None else None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=data,
                               headers={"Content-Type": "application/json"} if headers is None else headers)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_serve_answers_every_endpoint_refuses_bad_requests_and_stops_on_sigterm(tmp_path: Path) -> None:
    make_string_id_dataset(tmp_path / "data", train_rows=300, num_users=12, num_items=10)
    make_model_checkpoint(tmp_path / "data", tmp_path / "m.ckpt")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "lightning_mf", "serve", "--ckpt_path", str(tmp_path / "m.ckpt"), "--port", str(port),
         "--log_level", "warning", "--max_pairs", "50", "--max_body_kb", "16"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = Client(port)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                if client.call("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy in 120 s"
            time.sleep(0.5)
        processes = _descendants(server.pid)
        assert len(processes) >= 3  # HTTP server, one worker per endpoint (and LitServe's manager)

        model = lightning_mf.load(tmp_path / "m.ckpt", device="cpu")
        status, body = client.call("POST", "/predict", {"pairs": [["u001", "000000002X"], ["nobody", "000000003X"]]})
        expected = model.predict(["u001", "nobody"], ["000000002X", "000000003X"])
        assert status == 200 and body["fallback"] == ["model", "user unseen"]
        assert body["predictions"] == pytest.approx(expected["prediction"].to_list(), abs=1e-6)
        status, body = client.call("POST", "/recommend", {"user": "u002", "k": 3})
        expected = model.recommend(["u002"], k=3)
        assert status == 200 and body["items"] == expected["item"].to_list()
        assert body["scores"] == pytest.approx(expected["score"].to_list(), abs=1e-6)
        ratings = [["000000001X", 5.0], ["000000004X", 1.0], ["000000005X", 4.5]]
        status, body = client.call("POST", "/recommend", {"user": ratings, "k": 4})
        model.fold_in(pl.DataFrame({"user": ["new"] * 3, "item": [r[0] for r in ratings],
                                    "rating": [r[1] for r in ratings]}))
        assert status == 200 and body["items"] == model.recommend(["new"], k=4)["item"].to_list()
        assert not {"000000001X", "000000004X", "000000005X"} & set(body["items"])

        bad = [
            ("POST", "/predict", None, b'{"pairs": [["u001", "0', 422, "JSON decode error"),
            ("POST", "/predict", {"pairs": [["u001", True]]}, None, 422, "valid"),
            ("POST", "/predict", {"pairs": "u001"}, None, 422, "valid list"),
            ("POST", "/predict", {"pairs": []}, None, 422, "at least 1"),
            ("POST", "/predict", {"pairs": [["u001", "x"]] * 51}, None, 413, "at most 50"),
            ("POST", "/predict", {"pairs": [["u001", "x"]] * 2000}, None, 413, "over the limit of 16384 bytes"),
            ("POST", "/recommend", {"user": "u001", "k": 0}, None, 422, "greater than or equal to 1"),
            ("POST", "/recommend", {"user": "u001", "k": 11}, None, 422, "k=11 is out of range: at most 10"),
            ("POST", "/recommend", {"user": "u001", "k": "3"}, None, 422, "valid integer"),
            ("POST", "/recommend", {"user": [["000000001X", 9.0]]}, None, 422, "off the model's scale"),
            ("POST", "/recommend", {"user": "u001", "extra": 1}, None, 422, "Extra inputs"),
            ("POST", "/predict", None, b"pairs=1", 422, "Content-Type: application/json"),
        ]
        for method, path, body, raw, code, message in bad:
            headers = {} if raw == b"pairs=1" else None
            status, answer = client.call(method, path, body, raw, headers)
            assert status == code and message in json.dumps(answer), (path, body, raw, status, answer)
        assert client.call("POST", "/predict", {"pairs": [["u001", "000000002X"]]})[0] == 200  # still serving
        assert client.call("GET", "/health") == (200, "ok")
        # The latency benchmark's client, bounded: every concurrent request answered.
        sys.path.insert(0, str(REPO / "benchmarks"))
        from serve_latency import fire

        figures = fire(port, "/recommend", [json.dumps({"user": "u003", "k": 3}).encode()], requests=20, concurrency=4)
        assert (figures["requests"], figures["failed"]) == (20, 0) and 0 < figures["p50_ms"] <= figures["p99_ms"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            output = server.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            server.kill()
            output = server.communicate()[0]
    assert server.returncode == 0, output[-3000:]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in processes if _alive(pid)], "processes of the server outlived it"
    assert "Traceback" not in output, output[-3000:]
