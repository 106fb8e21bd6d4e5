"""A GDC-like HTTP server on loopback, for the demo and the tests.

``/data/{file_id}`` serves ``ROOT/{file_id}`` with Range support and a
Content-Disposition naming the file; ``/files/{file_id}`` answers its
metadata as the GDC API does. Faults on demand (``--faults JSON``), each per
file id: ``drop_after`` bytes (the first body is cut there), ``statuses``
(answers to send before serving, e.g. [503, 500]), ``ignore_range`` (always
200 with the whole file). Run as a process and stopped by its PID.

    python -m slidestock_testkit.gdcserver ROOT --port 0 [--faults '{...}'] [--token T]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
_ID = re.compile(r"^[0-9a-f-]{36}$")


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


class Handler(BaseHTTPRequestHandler):
    server: GdcServer

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"gdcserver: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    def _fault_status(self, file_id: str) -> int | None:
        with self.server.lock:
            statuses = self.server.faults.get(file_id, {}).get("statuses", [])
            return int(statuses.pop(0)) if statuses else None

    def do_GET(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("data", "files") or not _ID.match(parts[1]):
            self.send_error(404, "unknown path")
            return
        kind, file_id = parts
        if self.server.token and self.headers.get("X-Auth-Token") != self.server.token:
            self.send_error(403, "token required")
            return
        path = self.server.root / file_id
        if not path.is_file():
            self.send_error(404, "no such file")
            return
        status = self._fault_status(file_id)
        if status is not None:
            self.send_error(status, "injected fault")
            return
        if kind == "files":
            self._metadata(file_id, path)
        else:
            self._data(file_id, path)

    def _metadata(self, file_id: str, path: Path) -> None:
        name = self.server.names.get(file_id, path.name)
        body = json.dumps(
            {"data": {"file_id": file_id, "file_name": name, "file_size": path.stat().st_size, "md5sum": _md5(path)}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _data(self, file_id: str, path: Path) -> None:
        size = path.stat().st_size
        fault = self.server.faults.get(file_id, {})
        start, end = 0, size - 1
        match = _RANGE.match(self.headers.get("Range", ""))
        partial = match is not None and not fault.get("ignore_range")
        if partial and match is not None:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            if start >= size:
                self.send_error(416, "range not satisfiable")
                return
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", "application/octet-stream")
        name = self.server.names.get(file_id, path.name)
        self.send_header("Content-Disposition", f'attachment; filename="{name}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        with path.open("rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        with self.server.lock:
            drop = fault.pop("drop_after", None) if "drop_after" in fault else None
        if drop is not None and drop < len(body):
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class GdcServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, port: int, faults: dict[str, Any], names: dict[str, str], token: str | None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.root = root
        self.faults = faults
        self.names = names
        self.token = token
        self.lock = threading.Lock()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--faults", default="{}", help="JSON: {file_id: {drop_after|statuses|ignore_range}}")
    parser.add_argument("--names", default="{}", help="JSON: {file_id: file name for Content-Disposition}")
    parser.add_argument("--token", default=None)
    args = parser.parse_args()
    server = GdcServer(args.root, args.port, json.loads(args.faults), json.loads(args.names), args.token)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


@contextmanager
def serving(
    root: Path,
    faults: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
    token: str | None = None,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run the server in its own process for a ``with`` block; yields its base URL."""
    argv = [sys.executable, str(Path(__file__).resolve()), str(root), "--port", "0"]
    argv += ["--faults", json.dumps(faults or {}), "--names", json.dumps(names or {})]
    if token:
        argv += ["--token", token]
    stderr = log_path.open("ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
    finally:
        if log_path:
            stderr.close()  # type: ignore[union-attr]
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"gdcserver did not start (printed {url!r})")
        yield url
    finally:
        # Imported here: run as a script, this module has no slidestock package beside it.
        from slidestock_testkit.s3server import stop

        stop(proc)


if __name__ == "__main__":
    main()
