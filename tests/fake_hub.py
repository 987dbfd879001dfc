"""A minimal in-memory Hugging Face Hub on 127.0.0.1, for testing pushes without the network.

It answers only what ``HfApi`` / ``HfFileSystem`` / ``DatasetDict.push_to_hub`` call when creating a repo and
committing files, and what ``datasets.load_dataset``, ``from_pretrained`` / ``pipeline()`` (remote code, any
revision, subfolders), ``snapshot_download`` and ``evaluate.load`` (a Space) call to read them back: repo create and
info, YAML validation, preupload, commit (base64 files, LFS pointers, deletions, ``parentCommit`` checked), tree
listing, paths-info and file download (with byte ranges). Every commit is a full snapshot, so any revision (branch
name or commit sha) can be read back. ``refuse_commits_after(n)`` answers commits after the first n with 503 (a Hub
that goes away mid-run). Anything else is answered 501 and recorded in ``unhandled``, so a test can say which call
it lacked. Not served, among others: Xet storage, pull requests (``create_pr``), branches and tags
(``create_branch`` / ``create_tag``), repo deletion, moves and settings, Space runtimes and hardware, model and
dataset search, and authentication (every token is accepted).

Files are "regular" (inline in the commit) except those ending in ``lfs_suffixes``, which go through the basic LFS
transfer (batch API, then one PUT): ``DatasetDict.push_to_hub`` deletes each Parquet shard's temporary file right
after its preupload, relying on the Hub's answer "lfs" for ``.parquet``, so a "regular" shard could not be read
back at commit time. Xet is not served: run the client with ``HF_HUB_DISABLE_XET=1``.

    with FakeHub() as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_dummy"}
        ...  # run the code under test with env
        hub.file("dataset", "user/name", "README.md")
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"datasets": "dataset", "models": "model", "spaces": "space"}
_API = re.compile(r"^/api/(datasets|models|spaces)/([^/]+/[^/]+)(?:/(revision|tree|preupload|commit|paths-info)"
                  r"(?:/([^/]+))?(/.*)?)?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_LFS_BATCH = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_LFS_OBJECT = re.compile(r"^/__lfs/([0-9a-f]{64})$")


class Repo:
    """One repo: its commits (sha -> full snapshot of path -> bytes) and its branch heads."""

    def __init__(self, private: bool = False):
        self.private = private
        self.snapshots: dict[str, dict[str, bytes]] = {}
        self.branches: dict[str, str] = {}
        self.commit({}, "main", "initial commit")

    def commit(self, files: dict[str, bytes], branch: str, message: str) -> str:
        sha = hashlib.sha1(f"{len(self.snapshots)}:{message}".encode()).hexdigest()
        self.snapshots[sha] = files
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.snapshots else None


def _oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # a git blob id, as the Hub reports


class FakeHub:
    """The server; a context manager that serves from a background thread."""

    def __init__(self, lfs_suffixes: tuple[str, ...] = (".parquet", ".arrow", ".safetensors", ".bin")):
        self.lfs_suffixes = lfs_suffixes
        self.lfs_objects: dict[str, bytes] = {}  # sha256 hex -> content
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.commits: list[dict] = []  # (repo, summary, paths added, paths deleted, sha) of every commit, in order
        self.commit_limit: int | None = None  # refuse_commits_after
        self.refused: list[str] = []  # the summaries of the commits refused so far
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                hub._dispatch(self, "GET")

            def do_HEAD(self):
                hub._dispatch(self, "HEAD")

            def do_POST(self):
                hub._dispatch(self, "POST")

            def do_PUT(self):
                hub._dispatch(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def refuse_commits_after(self, count: int | None) -> None:
        """Answer every commit after the first ``count`` (counted over all repos) with 503, as a Hub that becomes
        unreachable in the middle of a run; every refused commit is recorded in ``refused``, in order. ``None``:
        accept commits again."""
        self.commit_limit = count

    # ---- what a test reads back ----------------------------------------------------------------------------------

    def file(self, repo_type: str, repo_id: str, path: str, revision: str = "main") -> bytes:
        repo = self.repos[(repo_type, repo_id)]
        return repo.snapshots[repo.resolve(revision)][path]

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[(repo_type, repo_id)]
        return dict(repo.snapshots[repo.resolve(revision)])

    # ---- HTTP ----------------------------------------------------------------------------------------------------

    def _dispatch(self, req: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(req.path)
        path, query = parts.path, parse_qs(parts.query)
        body = self._read_body(req)
        with self._lock:
            self.requests.append((method, path))
            try:
                status, headers, payload = self._route(method, path, query, body, req.headers)
            except Exception as exc:  # a bug here must show up in the client's error, not hang it
                status, headers, payload = 500, {}, json.dumps({"error": f"fake hub: {exc!r}"}).encode()
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json")
        req.send_response(status)
        for key, value in headers.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        if method != "HEAD":
            req.wfile.write(payload)

    @staticmethod
    def _read_body(req: BaseHTTPRequestHandler) -> bytes:
        if req.headers.get("Transfer-Encoding", "").lower() == "chunked":  # streamed uploads (LFS PUT of a file)
            chunks = []
            while True:
                size = int(req.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    req.rfile.readline()
                    return b"".join(chunks)
                chunks.append(req.rfile.read(size))
                req.rfile.readline()
        length = int(req.headers.get("Content-Length") or 0)
        return req.rfile.read(length) if length else b""

    @staticmethod
    def _error(status: int, code: str, message: str):
        return status, {"X-Error-Code": code, "X-Error-Message": message}, {"error": message}

    def _repo(self, type_plural: str, repo_id: str):
        return self.repos.get((REPO_TYPES[type_plural], unquote(repo_id)))

    def _route(self, method, path, query, body, headers):
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {}, {"errors": [], "warnings": []}
        if method == "GET" and path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry: none
            return 200, {}, {"standardEnvVars": [], "harnesses": {}}
        m = _API.match(path)
        if m:
            type_plural, repo_id, action, revision, rest = m.groups()
            repo = self._repo(type_plural, repo_id)
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            if action in (None, "revision") and method == "GET":
                return self._info(repo, unquote(repo_id), revision or "main")
            sha = repo.resolve(revision or "main")
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if action == "tree" and method == "GET":
                return self._tree(repo, sha, unquote((rest or "").lstrip("/")), query)
            if action == "paths-info" and method == "POST":
                return self._paths_info(repo, sha, body, headers)
            if action == "preupload" and method == "POST":
                files = json.loads(body)["files"]
                return 200, {}, {"files": [{"path": f["path"], "shouldIgnore": False,
                                            "uploadMode": "lfs" if f["path"].endswith(self.lfs_suffixes) else "regular"}
                                           for f in files]}
            if action == "commit" and method == "POST":
                return self._commit(repo, unquote(repo_id), unquote(revision), body)
        m = _RESOLVE.match(path)
        if m and method in ("GET", "HEAD"):
            return self._download(m, headers)
        m = _LFS_BATCH.match(path)
        if m and method == "POST":
            return self._lfs_batch(json.loads(body))
        m = _LFS_OBJECT.match(path)
        if m and method == "PUT":
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return 400, {}, {"error": "LFS object does not match its sha256"}
            self.lfs_objects[m.group(1)] = body
            return 200, {}, b""
        self.unhandled.append((method, path))
        return 501, {}, {"error": f"fake hub does not implement {method} {path}"}

    def _create_repo(self, payload):
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        repo_type = payload.get("type") or "model"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = {"url": f"{self.url}/{prefix}{repo_id}"}
        if (repo_type, repo_id) in self.repos:
            return 409, {}, {"error": "You already created this repo", **url}
        self.repos[(repo_type, repo_id)] = Repo(private=payload.get("visibility") == "private")
        return 200, {}, url

    def _info(self, repo, repo_id, revision):
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = repo.snapshots[sha]
        return 200, {}, {"id": repo_id, "sha": sha, "private": repo.private,
                         "siblings": [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())]}

    @staticmethod
    def _entries(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict]:
        prefix = f"{folder}/" if folder else ""
        out, folders = [], set()
        for p, data in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest) if recursive else min(2, len(rest))):
                folders.add(prefix + "/".join(rest[:depth]))
            if recursive or len(rest) == 1:
                out.append({"type": "file", "path": p, "size": len(data), "oid": _oid(data)})
        out += [{"type": "directory", "path": d, "size": 0, "oid": _oid(d.encode())} for d in sorted(folders)]
        return out

    def _tree(self, repo, sha, folder, query):
        files = repo.snapshots[sha]
        if folder and not any(p.startswith(folder + "/") for p in files):
            return self._error(404, "EntryNotFound", f"{folder} does not exist on {sha}")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        return 200, {}, self._entries(files, folder, recursive)

    def _paths_info(self, repo, sha, body, headers):
        if "application/json" in headers.get("Content-Type", ""):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        files, out = repo.snapshots[sha], []
        for p in paths:
            p = p.strip("/")
            if p in files:
                out.append({"type": "file", "path": p, "size": len(files[p]), "oid": _oid(files[p])})
            elif any(f.startswith(p + "/") for f in files) or p == "":
                out.append({"type": "directory", "path": p, "size": 0, "oid": _oid(p.encode())})
        return 200, {}, out

    def _commit(self, repo, repo_id, branch, body):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if self.commit_limit is not None and len(self.commits) >= self.commit_limit:
            self.refused.append(header.get("summary", ""))
            return self._error(503, "ServiceUnavailable", "fake hub: commits are refused (refuse_commits_after)")
        head = repo.branches.get(branch)
        if head is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        parent = header.get("parentCommit")
        if parent and not head.startswith(parent):
            return 412, {}, {"error": f"parent commit {parent} is not the head of {branch} ({head})"}
        files, added, deleted = dict(repo.snapshots[head]), [], []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return 400, {}, {"error": f"unexpected encoding {value.get('encoding')}"}
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 400, {}, {"error": f"LFS object {value['oid']} of {value['path']} was never uploaded"}
                files[value["path"]] = self.lfs_objects[value["oid"]]
                added.append(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
                deleted.append(value["path"])
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]:
                    files.pop(p)
                deleted.append(value["path"])
            elif key != "header":
                return 400, {}, {"error": f"fake hub: commit operation {key!r} not supported"}
        sha = repo.commit(files, branch, header.get("summary", ""))
        self.commits.append({"repo": repo_id, "summary": header.get("summary"), "added": added, "deleted": deleted,
                             "sha": sha})
        return 200, {}, {"commitUrl": f"{self.url}/{repo_id}/commit/{sha}", "commitOid": sha}

    def _lfs_batch(self, payload):
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            return 400, {}, {"message": "fake hub: only basic LFS uploads"}
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:  # no actions: the client skips what the server holds
                entry["actions"] = {"upload": {"href": f"{self.url}/__lfs/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, {"transfer": "basic", "objects": objects}

    def _download(self, match, headers):
        type_plural, repo_id, revision, file_path = match.groups()
        repo = self._repo(type_plural or "models", repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        data = repo.snapshots[sha].get(unquote(file_path))
        if data is None:
            return self._error(404, "EntryNotFound", f"{file_path} does not exist on {revision}")
        out = {"X-Repo-Commit": sha, "ETag": f'"{_oid(data)}"', "Accept-Ranges": "bytes",
               "Content-Type": "application/octet-stream"}
        byte_range = re.match(r"bytes=(\d+)-(\d*)$", headers.get("Range") or "")
        if byte_range:
            start = int(byte_range.group(1))
            end = int(byte_range.group(2)) if byte_range.group(2) else len(data) - 1
            out["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            return 206, out, data[start:end + 1]
        return 200, out, data
