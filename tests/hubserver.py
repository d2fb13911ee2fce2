"""A local stand-in for the parts of the Hugging Face hub protocol that huggingface_hub's snapshot_download
uses: revision info, the file tree, and resolve (HEAD/GET) with ETag and X-Repo-Commit headers."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXT = (".json", ".yaml", ".txt", ".md", ".jinja")


def etag(name: str, data: bytes) -> str:
    """As the hub does: small text files live in git (etag = git blob sha1), the rest in LFS (etag = sha256)."""
    if name.endswith(TEXT):
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return hashlib.sha256(data).hexdigest()


class Hub:
    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[str] = []  # Range headers received (resumed downloads)
        self.drop_once: set[str] = set()  # file names whose next GET is cut off halfway
        self.corrupt: dict[str, int] = {}  # file name -> how many more GETs send it with one byte flipped
        self.stall: set[str] = set()  # file names whose GET sends half the file, then nothing until close()
        self.stalled = threading.Event()  # a stalled GET is holding its connection
        self._closing = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _send_half(self, data: bytes, headers: dict):
                """Announce the whole file and send half of it."""
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()

            def _cut_off(self, data: bytes, headers: dict):
                """Half the file, then the connection dropped."""
                self._send_half(data, headers)
                self.close_connection = True
                self.connection.shutdown(2)

            def _stall(self, data: bytes, headers: dict):
                """A server that stops sending in the middle of a file (and keeps the connection open)."""
                self._send_half(data, headers)
                hub.stalled.set()
                hub._closing.wait()
                self.close_connection = True

            def _handle(self, head: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path))
                for repo, files in hub.repos.items():
                    if path.startswith(f"/api/models/{repo}/tree/"):
                        tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()} for f, d in files.items()]
                        return self._reply(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
                    if path.startswith(f"/api/models/{repo}/revision/"):
                        info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                        return self._reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        name = path[len(prefix):].partition("/")[2]
                        if name in files:
                            data = files[name]
                            headers = {"ETag": f'"{etag(name, data)}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
                            if not head and hub.corrupt.get(name, 0) > 0:
                                hub.corrupt[name] -= 1
                                data = data[:-1] + bytes([data[-1] ^ 0xFF])  # same size: only a hash can tell
                            if not head and name in hub.stall:
                                return self._stall(data, headers)
                            if not head and name in hub.drop_once:
                                hub.drop_once.discard(name)
                                return self._cut_off(data, headers)
                            rng = self.headers.get("Range")
                            if rng and not head:
                                hub.ranges.append(rng)
                                start = int(rng.removeprefix("bytes=").split("-")[0])
                                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                                return self._reply(206, data[start:], headers)
                            return self._reply(200, data, headers, head)
                return self._reply(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self):
                self._handle(False)

            def do_HEAD(self):
                self._handle(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
