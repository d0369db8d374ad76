"""A Hugging Face Hub stand-in on 127.0.0.1 for the resolver tests (imported by the hub tests; pytest
puts tests/ on sys.path): the ``/{repo}/resolve/{revision}/{path}`` endpoint that ``hf_hub_download``
uses, with its headers and error codes.

Serves repositories with branches and tags (``revisions``), files in subfolders, private repositories
that need ``Authorization: Bearer <token>``, and records every request, so that a test sees what a
client asked for (e.g. that ``force_download`` downloads again, or that ``local_files_only`` asks
nothing).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class Repo:
    """One repository: ``revisions`` maps a branch or tag to a commit, ``files`` a commit to its files."""

    revisions: dict[str, str]
    files: dict[str, dict[str, bytes]]
    token: str | None = None  # private: the token a request must carry


@dataclass
class FakeHub:
    repos: dict[str, Repo]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, auth)
    server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 (the http.server API)
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                status, headers, data = hub.respond(self.path, self.headers.get("Authorization"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def respond(self, path: str, authorization: str | None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of a ``/{owner}/{name}/resolve/{revision}/{file}`` request."""
        parts = path.split("?", 1)[0].split("/")
        if len(parts) < 6 or parts[3] != "resolve":
            return 404, {}, b"not found"
        repo_id, revision, filename = (
            f"{parts[1]}/{parts[2]}",
            unquote(parts[4]),
            unquote("/".join(parts[5:])),
        )
        repo = self.repos.get(repo_id)
        if repo is None or (repo.token is not None and authorization != f"Bearer {repo.token}"):
            return 401, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"
        commit = repo.revisions.get(revision, revision)
        if commit not in repo.files:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b"Revision not found"
        data = repo.files[commit].get(filename)
        if data is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"Entry not found"
        etag = hashlib.sha256(data).hexdigest()
        return 200, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, data

    def gets(self, filename: str) -> int:
        """How many times a file was downloaded (GET requests for it)."""
        return sum(
            1 for method, path, _ in self.requests if method == "GET" and path.endswith(f"/{filename}")
        )
