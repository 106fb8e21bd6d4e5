"""An HTTP proxy in front of the local S3 server that misbehaves on request, for the fault tests.

Usage: python -m slidestock_testkit.faultproxy --upstream URL --port PORT --rules RULES.json

Requests are forwarded to ``--upstream`` (rclone serve s3) and its answers
streamed back, except for request paths that contain a rule's ``match``:

- ``{"match": "...", "mode": "503"}``: answer 503 Slow Down;
- ``{"match": "...", "mode": "stall"}``: send nothing until the client gives up;
- ``{"match": "...", "mode": "slow", "bytes_per_s": N}``: stream the body at N bytes/s;
- ``{"match": "...", "mode": "whole"}``: ignore a Range header: the whole object, 200, no Content-Range
  (as a plain web server that does not serve ranges answers).

A rule with ``"times": N`` misbehaves for its first N matching requests only, then forwards.

The rules file is read on every request, so a test can change them while a
run goes on. Listens on 127.0.0.1 only; a test stops it by its PID.

A ranged GET that rclone answers with 200 and a Content-Range (rclone 1.75's S3
server does; gofakes3 answers 206 since its pull request 121) goes back as 206
Partial Content, as AWS and GCS answer it: obstore, rightly, takes a 200 for a
range as the whole object. Each answer's range and body size is logged as
``sent PATH RANGE BYTES``, so that tests can count what a client fetched.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHUNK = 64 << 10
PRINTING = threading.Lock()
# How many requests each rule (by its place and text) has matched, for rules with "times".
USED: dict[tuple[int, str], int] = {}


def make_handler(upstream: str, rules_path: Path) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The status line, the headers and the body go out as separate writes: without this, Nagle's
        # algorithm holds each answer's last write until the client's delayed ACK (40 ms a request).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            """Requests are logged when they arrive (by _forward), answered or not."""

        def _rule(self) -> dict[str, Any] | None:
            rules = json.loads(rules_path.read_text()) if rules_path.exists() else []
            for number, rule in enumerate(rules):
                if rule["match"] not in self.path:
                    continue
                with PRINTING:
                    key = (number, json.dumps(rule, sort_keys=True))
                    USED[key] = USED.get(key, 0) + 1
                    if "times" not in rule or USED[key] <= int(rule["times"]):
                        return dict(rule)
            return None

        def _forward(self) -> None:
            rule = self._rule()
            mode = rule["mode"] if rule else ""
            with PRINTING:
                print(f"{self.command} {self.path} {mode or 'forward'}", flush=True)
            if mode == "503":
                body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if mode == "stall":
                while True:  # until the client hangs up (the write fails) or the proxy is killed
                    time.sleep(1)
                    self.wfile.write(b"")
                    self.wfile.flush()
            length = int(self.headers.get("Content-Length") or 0)
            body_in = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
            dropped = ("host", "connection", "range") if mode == "whole" else ("host", "connection")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            conn.request(self.command, self.path, body=body_in, headers=headers)
            answer = conn.getresponse()
            ranged = "Range" in self.headers and answer.status == 200 and answer.getheader("Content-Range")
            self.send_response(206 if ranged else answer.status, "Partial Content" if ranged else answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(key, value)
            self.end_headers()
            rate = float(rule["bytes_per_s"]) if rule and mode == "slow" else 0.0
            sent = 0
            while chunk := answer.read(CHUNK):
                self.wfile.write(chunk)
                self.wfile.flush()
                sent += len(chunk)
                if rate:
                    time.sleep(len(chunk) / rate)
            conn.close()
            with PRINTING:  # one whole line per answer, whichever thread sent it
                print(f"sent {self.path} {self.headers.get('Range', '-')} {sent}", flush=True)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward  # noqa: N815 (http.server's names)

    return Handler


@contextmanager
def serving(upstream: str, log_path: Path, rules_path: Path | None = None) -> Iterator[str]:
    """Run the proxy in front of ``upstream`` for a ``with`` block; yields its URL. Stopped by its PID."""
    from slidestock_testkit.s3server import free_port, stop, wait_ready

    port = free_port()
    rules = rules_path or log_path.with_suffix(".rules.json")
    argv = [sys.executable, "-m", "slidestock_testkit.faultproxy", "--upstream", upstream, "--port", str(port),
            "--rules", str(rules)]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, timeout_s=30, name="the proxy")
        yield url
    finally:
        stop(proc)


def sent(log_path: Path, fragment: str = "") -> list[tuple[str, str, int]]:
    """(path, Range header, body bytes) of every answer the proxy logged whose path holds ``fragment``."""
    out = []
    for line in log_path.read_text().splitlines():
        if line.startswith("sent ") and fragment in line:
            _, path, ranged, size = line.split(" ")
            out.append((path, ranged, int(size)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rules", type=Path, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.upstream, args.rules))
    server.daemon_threads = True
    print(f"faultproxy: 127.0.0.1:{args.port} -> {args.upstream}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
