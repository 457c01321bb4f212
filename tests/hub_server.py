# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""A Hugging Face Hub on 127.0.0.1 for the tests, so pushes and downloads run through `huggingface_hub`'s own HTTP
code (its requests, retries, timeouts, errors and cache).

It serves the endpoints a push and a download of a model repository call: create a repository, its refs, commits,
tree and revision info, card metadata validation, preupload, commit (files inline, as `huggingface_hub` sends the
files the server marks ``regular``), create a branch, and ``resolve/<revision>/<file>`` downloads. Repositories are
git-like (commits with a parent, a title and a tree; branches), kept in a folder. [`Fault`]s make chosen requests
fail: an HTTP error, an action whose response is lost, a request that never answers, or one held until the test lets
it go.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REVISION = r"(?P<revision>[^/]+)"
#: (HTTP method, route name, path pattern): every endpoint served.
_ROUTES = [
    ("POST", "create_repo", re.compile(r"/api/repos/create")),
    ("POST", "validate_yaml", re.compile(r"/api/validate-yaml")),
    ("GET", "list_repo_refs", re.compile(rf"/api/models/{_REPO}/refs")),
    ("GET", "list_repo_commits", re.compile(rf"/api/models/{_REPO}/commits/{_REVISION}")),
    ("GET", "list_repo_tree", re.compile(rf"/api/models/{_REPO}/tree/{_REVISION}(?P<path>/.*)?")),
    ("GET", "repo_info", re.compile(rf"/api/models/{_REPO}(?:/revision/{_REVISION})?")),
    ("GET", "space_info", re.compile(rf"/api/spaces/{_REPO}")),
    ("POST", "preupload", re.compile(rf"/api/models/{_REPO}/preupload/{_REVISION}")),
    ("POST", "create_commit", re.compile(rf"/api/models/{_REPO}/commit/{_REVISION}")),
    ("POST", "create_branch", re.compile(rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)")),
    ("HEAD", "resolve", re.compile(rf"/{_REPO}/resolve/{_REVISION}/(?P<path>.+)")),
    ("GET", "resolve", re.compile(rf"/{_REPO}/resolve/{_REVISION}/(?P<path>.+)")),
]


class HubError(Exception):
    """An error answer: status, message and the `X-Error-Code` `huggingface_hub` maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


@dataclass
class Fault:
    """What the hub does to the next ``times`` requests of ``route`` about ``subject`` (``None``: any).

    The subject of a commit is its stage (``task-<t>``, from its title), of a branch its name, of a read its
    revision. ``action``: ``"500"``/``"401"`` answer that error without acting; ``"after-500"`` acts, then answers 500
    (the response is lost); ``"stall"`` never answers; ``"hold-upload"`` reads half the request body, then waits for
    ``release`` (a client gone by then never completed its request: nothing happens); ``"hold-response"`` acts, then
    waits for ``release`` before it answers. ``reached`` is set when a held request arrives.
    """

    route: str
    subject: str | None = None
    action: str = "500"
    times: int = 1
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class LocalHub:
    """The hub, at ``url`` while `running()`, optionally accepting one ``token`` only (others get a 401).

    ``faults`` are applied in order; ``calls`` lists ``(route, subject)`` of every request served.
    """

    def __init__(self, folder: Path, token: str | None = None):
        self.folder, self.token = Path(folder), token
        self.faults: list[Fault] = []
        self.spaces: set[str] = set()  # the Space ids that exist (a Space's files are not served)
        self.calls: list[tuple[str, str | None]] = []
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[LocalHub]:
        thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stopped.set()  # stalled and held requests end
            for fault in self.faults:
                fault.release.set()
            self._server.shutdown()
            self._server.server_close()

    # ---------------------------------------------------------------------------------------------- repository state
    def _repo_dir(self, repo: str) -> Path:
        return self.folder / "repos" / repo.replace("/", "--")

    def _read(self, repo: str, name: str) -> Any:
        path = self._repo_dir(repo) / name
        if not path.is_file():
            raise HubError(401, f"Repository Not Found for url: {repo}.", "RepoNotFound")
        return json.loads(path.read_text())

    def _write(self, repo: str, name: str, value: Any) -> None:
        path = self._repo_dir(repo) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))

    def branches_of(self, repo: str) -> dict[str, str]:
        """``{branch: commit oid}``."""
        return self._read(repo, "refs.json")

    def commit(self, repo: str, oid: str) -> dict[str, Any]:
        """``{"parent", "title", "message", "date", "tree": {path: blob sha256}}``."""
        return self._read(repo, f"commits/{oid}.json")

    def resolve(self, repo: str, revision: str) -> str:
        """The commit oid of a branch name or an oid."""
        branches = self.branches_of(repo)
        if revision in branches:
            return branches[revision]
        if (self._repo_dir(repo) / "commits" / f"{revision}.json").is_file():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def tree(self, repo: str, revision: str) -> dict[str, bytes]:
        """The files of a revision."""
        shas = self.commit(repo, self.resolve(repo, revision))["tree"]
        return {path: (self.folder / "blobs" / sha).read_bytes() for path, sha in shas.items()}

    def history(self, repo: str, revision: str = "main") -> list[tuple[str, dict[str, Any]]]:
        """``(oid, commit)`` from ``revision`` back to the first commit."""
        oid, commits = self.resolve(repo, revision), []
        while oid is not None:
            commits.append((oid, self.commit(repo, oid)))
            oid = commits[-1][1]["parent"]
        return commits

    def _new_commit(self, repo: str, parent: str | None, title: str, message: str, tree: dict[str, bytes]) -> str:
        shas = {}
        for path, data in tree.items():
            shas[path] = hashlib.sha256(data).hexdigest()
            blob = self.folder / "blobs" / shas[path]
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
        oid = hashlib.sha1(
            json.dumps([parent, title, shas, len(list(self._repo_dir(repo).glob("commits/*")))]).encode()
        ).hexdigest()
        date = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        self._write(
            repo,
            f"commits/{oid}.json",
            {"parent": parent, "title": title, "message": message, "date": date, "tree": shas},
        )
        return oid

    # ---------------------------------------------------------------------------------------------- endpoints
    def create_repo(self, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        repo = f"{body['organization']}/{body['name']}"
        if (self._repo_dir(repo) / "refs.json").is_file():
            raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo}")
        self._write(repo, "repo.json", {"visibility": body.get("visibility")})
        initial = self._new_commit(repo, None, "initial commit", "", {".gitattributes": b"*.safetensors filter=lfs\n"})
        self._write(repo, "refs.json", {"main": initial})
        return 200, {"url": f"{self.url}/{repo}", "name": repo}

    def validate_yaml(self, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        """The card's metadata block must be a YAML mapping (the Hub checks its fields, too)."""
        parts = body["content"].split("---\n", 2)
        metadata = yaml.safe_load(parts[1]) if body["content"].startswith("---\n") and len(parts) == 3 else {}
        if not isinstance(metadata, dict):
            raise HubError(400, "The metadata block of README.md is not a YAML mapping.")
        return 200, {"warnings": []}

    def list_repo_refs(self, repo: str, **_: Any) -> tuple[int, Any]:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in self.branches_of(repo).items()
        ]
        return 200, {"branches": branches, "converts": [], "tags": []}

    def list_repo_commits(self, repo: str, revision: str, **_: Any) -> tuple[int, Any]:
        return 200, [
            {
                "id": oid,
                "title": commit["title"],
                "message": commit["message"],
                "date": commit["date"],
                "authors": [{"user": "someone"}],
            }
            for oid, commit in self.history(repo, revision)
        ]

    def list_repo_tree(self, repo: str, revision: str, **_: Any) -> tuple[int, Any]:
        """Every file of the revision (the recursive listing of the root, which is all `list_repo_files` asks)."""
        tree = self.commit(repo, self.resolve(repo, revision))["tree"]
        return 200, [
            {"type": "file", "path": path, "oid": sha, "size": (self.folder / "blobs" / sha).stat().st_size}
            for path, sha in sorted(tree.items())
        ]

    def repo_info(self, repo: str, revision: str | None = None, **_: Any) -> tuple[int, Any]:
        oid = self.resolve(repo, revision or "main")
        private = self._read(repo, "repo.json")["visibility"] == "private"
        files = sorted(self.commit(repo, oid)["tree"])
        return 200, {
            "id": repo,
            "modelId": repo,
            "sha": oid,
            "private": private,
            "siblings": [{"rfilename": path} for path in files],
        }

    def space_info(self, repo: str, **_: Any) -> tuple[int, Any]:
        if repo not in self.spaces:
            raise HubError(401, f"Repository Not Found for url: spaces/{repo}.", "RepoNotFound")
        return 200, {"id": repo, "sha": "0" * 40, "private": False, "siblings": []}

    def preupload(self, repo: str, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        self._read(repo, "refs.json")
        return 200, {
            "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]
        }

    def create_commit(self, repo: str, revision: str, lines: list[dict[str, Any]], **_: Any) -> tuple[int, Any]:
        head = self.resolve(repo, revision)
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            raise HubError(412, f"A commit has happened since ({revision} is at {head}); refresh and try again.")
        tree = self.tree(repo, head)
        for line in lines[1:]:
            if line["key"] == "file":
                tree[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] == "deletedFile":
                del tree[line["value"]["path"]]
            else:
                raise HubError(400, f"The local hub takes files inline only, got `{line['key']}`.")
        oid = self._new_commit(repo, head, header["summary"], header.get("description", ""), tree)
        self._write(repo, "refs.json", {**self.branches_of(repo), revision: oid})
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True}

    def create_branch(self, repo: str, branch: str, body: dict[str, Any], **_: Any) -> tuple[int, Any]:
        branches = self.branches_of(repo)
        if branch in branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        oid = self.resolve(repo, body.get("startingPoint") or "main")
        self._write(repo, "refs.json", {**branches, branch: oid})
        return 200, {}

    def resolve_file(self, repo: str, revision: str, path: str) -> tuple[str, bytes]:
        oid = self.resolve(repo, revision)
        sha = self.commit(repo, oid)["tree"].get(path)
        if sha is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return oid, (self.folder / "blobs" / sha).read_bytes()

    # ---------------------------------------------------------------------------------------------- faults
    def _fault(self, route: str, subject: str | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.route == route and fault.subject in (None, subject):
                    fault.times -= 1
                    return fault
        return None

    def wait_stopped(self) -> None:
        self._stopped.wait()

    def point_huggingface_hub_here(self, monkeypatch: Any, cache_dir: Path, token: str = "hf_local") -> None:
        """Make `huggingface_hub` in this process, and the processes it starts, talk to this hub.

        `HF_ENDPOINT` is read once, when `huggingface_hub` is imported, into `constants.ENDPOINT`, the download URL
        template and the module-level `HfApi` behind `huggingface_hub.file_exists` & co. (which PEFT calls): all are
        patched; the environment variables serve new processes.
        """
        from huggingface_hub import constants, hf_api

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        template = self.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(hf_api.api, "endpoint", self.url)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
        for name, value in {
            "HF_ENDPOINT": self.url,
            "HF_HUB_CACHE": str(cache_dir),
            "HF_TOKEN": token,
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }.items():
            monkeypatch.setenv(name, value)

    # ---------------------------------------------------------------------------------------------- for assertions
    def visibility(self, repo: str) -> str | None:
        return self._read(repo, "repo.json")["visibility"]

    def titles(self, repo: str) -> list[str]:
        """The titles of ``main``'s commits, oldest first."""
        return [commit["title"] for _, commit in reversed(self.history(repo))]


def _subject(route: str, params: dict[str, str], header: bytes) -> str | None:
    """A commit's stage (from the title in its header line), a branch's name, or the revision read."""
    if route == "create_commit":
        return json.loads(header)["value"]["summary"].split(":")[0].removeprefix("Add ")
    return params.get("branch") or params.get("revision")


def _read_rest(stream: Any, size: int) -> bytes:
    """Up to ``size`` bytes of a request body; fewer when the client went away."""
    try:
        return stream.read(size) if size > 0 else b""
    except ConnectionError:
        return b""


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: `hub.calls` records the requests
            pass

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            path = unquote(urlsplit(self.path).path)
            for route_method, route, pattern in _ROUTES:
                match = pattern.fullmatch(path)
                if route_method == method and match:
                    break
            else:
                self._send(404, {"error": f"The local hub does not serve {method} {path}."})
                return
            params = {key: value for key, value in match.groupdict().items() if value is not None}
            params["path"] = params.get("path", "").lstrip("/")
            size = int(self.headers.get("Content-Length") or 0)
            try:
                # A commit's subject is in its header, the first line of its body.
                raw = self.rfile.readline() if route == "create_commit" else b""
                subject = _subject(route, params, raw)
                hub.calls.append((route, subject))
                fault = hub._fault(route, subject)
                if fault is not None and fault.action == "hold-upload":
                    raw += self.rfile.read((size - len(raw)) // 2)
                    fault.reached.set()
                    fault.release.wait()
                raw += _read_rest(self.rfile, size - len(raw))
                if len(raw) < size or (fault is not None and fault.action == "hold-upload" and self._client_gone()):
                    return  # the client went away mid-upload: nothing happens
                if fault is not None and fault.action == "stall":
                    hub.wait_stopped()
                    return
                if fault is not None and fault.action in ("500", "401"):
                    raise HubError(int(fault.action), f"Simulated error {fault.action} in {route}")
                self._check_token()
                body = {} if not raw or route == "create_commit" else json.loads(raw)
                lines = [] if route != "create_commit" else [json.loads(line) for line in raw.splitlines()]
                with hub._lock:
                    if route == "resolve":
                        oid, data = hub.resolve_file(params["repo"], params["revision"], params["path"])
                    else:
                        status, answer = getattr(hub, route)(body=body, lines=lines, **params)
                if fault is not None and fault.action == "after-500":
                    raise HubError(500, f"Simulated error 500 in {route}, after it was done")
                if fault is not None and fault.action == "hold-response":
                    fault.reached.set()
                    fault.release.wait()
            except HubError as error:
                self._send(
                    error.status,
                    {"error": str(error), **error.extra},
                    {"X-Error-Code": error.code} if error.code else {},
                )
                return
            if route == "resolve":
                etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id, as the Hub's
                headers = {"X-Repo-Commit": oid, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
                self._send_bytes(200, data, headers, with_body=method == "GET")
            else:
                self._send(status, answer)

        def _client_gone(self) -> bool:
            try:
                return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return False
            except ConnectionError:
                return True

        def _check_token(self) -> None:
            if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
                raise HubError(401, "Invalid credentials in Authorization header")

        def _send(self, status: int, answer: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(answer).encode()
            self._send_bytes(
                status, data, {"Content-Type": "application/json", **(headers or {})}, with_body=self.command != "HEAD"
            )

        def _send_bytes(self, status: int, data: bytes, headers: dict[str, str], with_body: bool) -> None:
            try:
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client was killed
                pass

    return Handler
