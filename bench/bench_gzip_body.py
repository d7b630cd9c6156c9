"""gzip bombs against the host-exec service: the latency of a concurrent `uname -a`.

Each repetition starts the service of two trees in turn, interleaved: `before` (the last
commit that let aiohttp inflate request bodies, and read a body it had refused for ten more
seconds) and `after` (HEAD by default), each exported with `git archive` and run as
`python -m sel_otel.hostexec` on a loopback socket. Against each it measures:
- quiet: 20 `POST /exec {"command": "uname -a"}` one after another (median);
- under attack: the same requests, one after another, while 4 connections each send,
  unauthenticated, a 1 MB gzip body that inflates to 1 GiB (median and slowest of the
  requests made while the bombs were being sent), and the service's CPU seconds meanwhile.

Prints each figure as median (min-max) of the repetitions, and the load average.
Target: under attack as quiet, beyond noise.

Run: .venv/bin/python bench/bench_gzip_body.py [--before REV] [--after REV] [--repetitions N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
from _common import REPETITIONS, interleaved, load_average, print_header, spread

ROOT = Path(__file__).resolve().parent.parent
#: The parent of the first commit that stopped inflating request bodies.
BEFORE = "8489316^"
BOMBS = 4
QUIET_CALLS = 20


def gzip_bomb(inflated: int = 2**30) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(2**20)
    return b"".join(packer.compress(zeros) for _ in range(inflated // len(zeros))) + packer.flush()


def export_tree(rev: str, into: Path) -> Path:
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "sel_otel"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


class Service:
    """The service of one exported tree, on a loopback socket it inherits."""

    def __init__(self, tree: Path) -> None:
        self.token = secrets.token_urlsafe(32)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(tree),
            "HOST_EXEC_TOKEN": self.token,
            "HOST_EXEC_LISTEN_FD": str(self._listener.fileno()),
            "OTEL_SDK_DISABLED": "true",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sel_otel.hostexec"],
            cwd=tree,
            env=env,
            pass_fds=[self._listener.fileno()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
            trust_env=False,
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/healthz").status_code == 200:
                    break
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)

    def uname(self) -> float:
        started = time.perf_counter()
        response = self.client.post("/exec", json={"command": "uname -a"})
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text
        return elapsed

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def send_bomb(self, bomb: bytes) -> None:
        head = (
            f"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
        ).encode()
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock,
            contextlib.suppress(OSError),  # closed by the service while it was sent
        ):
            sock.sendall(head + bomb)
            while sock.recv(65536):  # until the service closes the connection
                pass

    def close(self) -> None:
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._listener.close()


def measure(tree: Path, bomb: bytes) -> dict[str, float]:
    service = Service(tree)
    try:
        for _ in range(3):
            service.uname()  # warm-up
        quiet = statistics.median(service.uname() for _ in range(QUIET_CALLS))
        cpu_before = service.cpu_seconds()
        senders = [threading.Thread(target=service.send_bomb, args=(bomb,)) for _ in range(BOMBS)]
        for sender in senders:
            sender.start()
        attacked: list[float] = []
        while any(sender.is_alive() for sender in senders) or len(attacked) < 5:
            attacked.append(service.uname())
        for sender in senders:
            sender.join()
        return {
            "quiet_ms": quiet * 1000,
            "attack_median_ms": statistics.median(attacked) * 1000,
            "attack_max_ms": max(attacked) * 1000,
            "service_cpu_s": service.cpu_seconds() - cpu_before,
        }
    finally:
        service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--repetitions", type=int, default=REPETITIONS)
    args = parser.parse_args()
    print_header("host-exec: uname -a latency while gzip bombs are sent")
    bomb = gzip_bomb()
    print(f"{BOMBS} concurrent unauthenticated bodies of {len(bomb)} bytes, 1 GiB inflated each")
    with tempfile.TemporaryDirectory(prefix="bench-gzip-") as tmp:
        trees = {
            "before": export_tree(args.before, Path(tmp) / "before"),
            "after": export_tree(args.after, Path(tmp) / "after"),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for name in interleaved(list(trees), args.repetitions):
            results[name].append(measure(trees[name], bomb))
            print(f"  {name}: {results[name][-1]}", flush=True)
    for name, runs in results.items():
        print(f"{name} ({args.before if name == 'before' else args.after}):")
        for key, unit in [
            ("quiet_ms", "ms uname -a, quiet"),
            ("attack_median_ms", "ms uname -a under attack, median"),
            ("attack_max_ms", "ms uname -a under attack, slowest"),
            ("service_cpu_s", "s service CPU during the attack"),
        ]:
            print(f"  {spread([run[key] for run in runs]).show()} {unit}")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
