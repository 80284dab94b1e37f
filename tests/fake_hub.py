"""A Hugging Face Hub on loopback: serves one model repository (a directory) through the endpoints that
huggingface_hub's snapshot_download uses (repo info, file tree, resolve), and records the requests."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, repo_id: str, files_dir: Path):
        self.repo_id, self.files_dir = repo_id, Path(files_dir)
        self.files = {p.relative_to(files_dir).as_posix(): p.read_bytes() for p in files_dir.rglob("*") if p.is_file()}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub.respond(self, body=False)

            def do_GET(self):
                hub.respond(self, body=True)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def respond(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        api = f"/api/models/{self.repo_id}/"
        resolve = f"/{self.repo_id}/resolve/"
        if path.startswith(api + "revision/"):
            siblings = [{"rfilename": name} for name in sorted(self.files)]
            return self.send(handler, json.dumps({"id": self.repo_id, "sha": COMMIT, "siblings": siblings}), body)
        if path.startswith(api + "tree/"):
            tree = [{"type": "file", "oid": git_blob_id(data), "size": len(data), "path": name}
                    for name, data in sorted(self.files.items())]  # fmt: skip
            return self.send(handler, json.dumps(tree), body)
        if path.startswith(resolve):
            name = path[len(resolve) :].partition("/")[2]
            if name in self.files:
                data = self.files[name]
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_id(data)}"'}
                return self.send(handler, data, body, "application/octet-stream", headers)
        handler.send_response(404)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    @staticmethod
    def send(handler, payload, body: bool, content_type="application/json", headers=None) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        handler.send_response(200)
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(data)), **(headers or {})}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
