"""A local stand-in for the Hugging Face Hub's HTTP API, run as a server process (``HF_ENDPOINT``).

No machine of this project reaches the hub, yet the GPU job's first step is a download. This server
lets ``huggingface_hub``'s own client -- unmodified, over real HTTP -- download checkpoints from a
folder of repositories, so the download path and everything after it run as on a GPU runner (see
``tests/test_gpu_rehearsal.py``). It implements exactly what the client calls to find and download
a model (read in huggingface_hub's ``hf_api.py``, ``file_download.py``, ``_snapshot_download.py``,
``utils/_http.py``), with the headers and error codes the hub sends:

* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``model_info`` /
  ``repo_info``; ``?blobs=true`` adds each file's size, blob id and LFS sha256/size);
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``list_repo_tree``, ``?recursive=``) and
  ``POST /api/models/{repo}/paths-info/{rev}`` (``get_paths_info``); the same under
  ``/api/datasets/`` for dataset repos, which ``datasets.load_dataset`` reads through them;
* ``GET /api/agent-harnesses`` (the client's agent-detection registry: an empty one);
* ``HEAD`` / ``GET /{repo}/resolve/{rev}/{path}`` (``/datasets/{repo}/resolve/...`` for datasets): a regular file answers 200 with ``ETag`` (its git
  blob id), ``X-Repo-Commit`` and ``Content-Length``; an LFS file (safetensors, pickles,
  sentencepiece models, as the hub's ``.gitattributes`` track them) answers 302 to a "CDN" url with
  ``X-Linked-Etag`` (its sha256), ``X-Linked-Size`` and ``X-Repo-Commit``, as the hub redirects LFS
  files. The CDN url uses another host name for this same server (``localhost`` where the API is
  ``127.0.0.1``), so the client treats it as the hub's CDN: it does not follow the redirect on HEAD
  and sends no token there. Every file answers HTTP Range requests (206), which the client uses to
  resume a broken transfer;
* errors as ``hf_raise_for_status`` maps them: a gated repo without a token is 401 with
  ``X-Error-Code: GatedRepo`` (403 for a token that was not granted access) on file requests, while
  its metadata stays public, as on the hub; an unknown repo is ``RepoNotFound`` (401 without a token,
  404 with one), an unknown revision ``RevisionNotFound``, an unknown file ``EntryNotFound`` (404).

The folder holds ``hub.json`` (``{"repos": {"org/name": {"gated": "manual" | false}}, "datasets":
{...}}``) and one sub-folder per repo with its files (datasets under ``datasets/``). Each repo has one commit, ``main``, whose sha is derived from
its files. Requests are counted (``GET /_hub/requests``, ``POST /_hub/reset``; these two are not
counted), so a test can prove a run never asked the hub.

Why not a real mirror server: olah (0.5.4 on PyPI, the one that can serve repositories offline) serves
local git repositories (its ``mirrors-path``), but reports every local repository as ``gated: false``
and passes a 401/403 through only from an upstream hub, so it cannot give the gated answer that a
runner without ``HF_TOKEN`` gets; it also needs git repositories with LFS objects and about twenty
dependencies (fastapi, uvicorn, GitPython, peewee, ...).

    python -m drope_check.models.local_hub ROOT [--port 0] [--token TOKEN ...]

prints ``local hub: serving ROOT at http://127.0.0.1:PORT`` once it accepts requests. Only werkzeug
and the standard library are imported (no torch): it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

__all__ = ["LFS_PATTERNS", "LocalHub", "LocalHubProcess", "local_hub_process", "serve"]

#: Files the hub stores in LFS (the patterns of the ``.gitattributes`` every hub repo starts with).
LFS_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.bin",
    "*.pth",
    "*.pt",
    "*.model",
    "*.pdf",
    "*.gguf",
    "*.parquet",
)
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
LAST_MODIFIED = "2023-07-18T16:00:00.000Z"


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob (``sha1("blob <size>\\0" + data)``), the hub's ``oid`` / ``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    blob_id: str  # git blob id: of the file, or of its LFS pointer
    sha256: str | None  # LFS files only
    pointer_size: int | None
    disk: Path

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.sha256 is not None:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry

    def sibling(self, blobs: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": self.path}
        if blobs:
            entry.update(size=self.size, blobId=self.blob_id)
            if self.sha256 is not None:
                entry["lfs"] = {"size": self.size, "sha256": self.sha256, "pointerSize": self.pointer_size}
        return entry


@dataclass
class Repo:
    repo_id: str
    gated: str | bool
    files: dict[str, RepoFile]
    sha: str = ""
    kind: str = "model"  # or "dataset"

    @classmethod
    def read(cls, root: Path, repo_id: str, gated: str | bool, kind: str = "model") -> Repo:
        folder = root / (f"datasets/{repo_id}" if kind == "dataset" else repo_id)
        if not folder.is_dir():
            raise FileNotFoundError(f"{root / 'hub.json'} lists {repo_id}, but {folder} is not a folder")
        files: dict[str, RepoFile] = {}
        for disk in sorted(p for p in folder.rglob("*") if p.is_file()):
            path = disk.relative_to(folder).as_posix()
            data = disk.read_bytes()
            if any(fnmatch.fnmatch(path, pattern) for pattern in LFS_PATTERNS):
                sha256 = hashlib.sha256(data).hexdigest()
                pointer = LFS_POINTER.format(sha256=sha256, size=len(data)).encode()
                files[path] = RepoFile(path, len(data), git_blob_id(pointer), sha256, len(pointer), disk)
            else:
                files[path] = RepoFile(path, len(data), git_blob_id(data), None, None, disk)
        tree = "".join(f"{f.path}\0{f.blob_id}\n" for f in files.values()).encode()
        return cls(
            repo_id, gated, files, sha=hashlib.sha1(repo_id.encode() + b"\0" + tree).hexdigest(), kind=kind
        )

    def info(self, blobs: bool) -> dict[str, Any]:
        author = self.repo_id.split("/")[0]
        return {
            "_id": hashlib.sha1(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": author,
            "sha": self.sha,
            "lastModified": LAST_MODIFIED,
            "createdAt": LAST_MODIFIED,
            "private": False,
            "gated": self.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "siblings": [f.sibling(blobs) for f in self.files.values()],
            **(
                {
                    "library_name": "transformers",
                    "tags": ["transformers", "safetensors", "llama", "text-generation"],
                    "pipeline_tag": "text-generation",
                }
                if self.kind == "model"
                else {"tags": ["format:parquet"]}
            ),
        }


class HubError(Exception):
    """An error answer: status, ``X-Error-Code`` and message (header and JSON body, as the hub)."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


@dataclass
class LocalHub:
    """The WSGI application: repositories read once from ``root``, requests counted."""

    root: Path
    granted_tokens: frozenset[str] = frozenset()
    cdn_host: str = "localhost"
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        manifest = json.loads((self.root / "hub.json").read_text(encoding="utf-8"))
        for kind, key in (("model", "repos"), ("dataset", "datasets")):
            for rid, spec in manifest.get(key, {}).items():
                self.repos[(kind, rid)] = Repo.read(self.root, rid, spec.get("gated", False), kind)

    # routing ----------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        from werkzeug.wrappers import Request, Response

        request = Request(environ)
        path = unquote(request.path)
        if path.startswith("/_hub/"):
            return self._control(request, path)(environ, start_response)
        try:
            response = self._route(request, path)
        except HubError as exc:
            headers = {"X-Error-Message": exc.message, "Content-Type": "application/json"}
            if exc.code is not None:
                headers["X-Error-Code"] = exc.code
            if exc.commit is not None:
                headers["X-Repo-Commit"] = exc.commit
            response = Response(json.dumps({"error": exc.message}), status=exc.status, headers=headers)
        with self._lock:
            self.log.append(
                {
                    "method": request.method,
                    "path": path,
                    "status": response.status_code,
                    "token": self._token(request) is not None,
                    "range": request.headers.get("Range"),
                }
            )
        return response(environ, start_response)

    def _control(self, request: Any, path: str) -> Any:
        from werkzeug.wrappers import Response

        with self._lock:
            if path == "/_hub/reset" and request.method == "POST":
                self.log.clear()
            body = {"count": len(self.log), "requests": list(self.log)}
        return Response(json.dumps(body), content_type="application/json")

    def _route(self, request: Any, path: str) -> Any:
        method = request.method
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            if method != "GET":
                raise HubError(405, None, f"{method} not allowed")
            repo = self._repo(request, m.group(1), m.group(2))
            self._revision(repo, m.group(3) or "main")
            return self._json(repo.info(blobs=request.args.get("blobs", "").lower() == "true"))
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            repo = self._repo(request, m.group(1), m.group(2))
            self._revision(repo, m.group(3))
            return self._json(
                self._tree(repo, m.group(4) or "", request.args.get("recursive", "").lower() == "true")
            )
        if m := re.fullmatch(r"/api/(models|datasets)/([^/]+/[^/]+)/paths-info/([^/]+)", path):
            repo = self._repo(request, m.group(1), m.group(2))
            self._revision(repo, m.group(3))
            wanted = request.form.getlist("paths") or (request.get_json(silent=True) or {}).get("paths", [])
            return self._json(self._paths_info(repo, wanted))
        if m := re.fullmatch(r"/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            if method not in ("GET", "HEAD"):
                raise HubError(405, None, f"{method} not allowed")
            return self._resolve(
                request, "datasets" if m.group(1) else "models", m.group(2), m.group(3), m.group(4)
            )
        if (
            path == "/api/agent-harnesses"
        ):  # the client's agent-detection registry (cached in HF_HOME for a day)
            return self._json({"standardEnvVars": ["AI_AGENT", "AGENT"], "harnesses": {}})
        if m := re.fullmatch(r"/cdn-lfs/([0-9a-f]{64})", path):
            for repo in self.repos.values():
                for file in repo.files.values():
                    if file.sha256 == m.group(1):
                        return self._file_response(request, file, {"ETag": f'"{file.sha256}"'})
            raise HubError(404, None, "LFS object not found")
        raise HubError(404, None, f"no route for {method} {path}")

    # pieces -------------------------------------------------------------------------------------

    @staticmethod
    def _token(request: Any) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth[len("Bearer ") :].strip() or None if auth.startswith("Bearer ") else None

    def _repo(self, request: Any, kind: str, repo_id: str) -> Repo:
        repo = self.repos.get((kind.removesuffix("s"), repo_id))
        if repo is None:  # the hub answers 401 to an anonymous request, 404 to an authenticated one
            status = 404 if self._token(request) else 401
            raise HubError(status, "RepoNotFound", "Repository not found")
        return repo

    @staticmethod
    def _revision(repo: Repo, revision: str) -> None:
        if revision not in ("main", repo.sha):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    @staticmethod
    def _json(payload: Any) -> Any:
        from werkzeug.wrappers import Response

        return Response(json.dumps(payload), content_type="application/json")

    def _paths_info(self, repo: Repo, wanted: Sequence[str]) -> list[dict[str, Any]]:
        """Files and folders among ``wanted`` (a folder is any prefix of a file's path)."""
        entries = []
        for path in wanted:
            path = path.strip("/")
            if path in repo.files:
                entries.append(repo.files[path].tree_entry())
            elif any(f.startswith(f"{path}/") for f in repo.files):
                entries.append(
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(path.encode()).hexdigest(),
                        "size": 0,
                        "path": path,
                    }
                )
        return entries

    @staticmethod
    def _tree(repo: Repo, folder: str, recursive: bool) -> list[dict[str, Any]]:
        """The entries under ``folder``: its files and sub-folders, or (recursive) everything below it."""
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        files: list[dict[str, Any]] = []
        folders: set[str] = set()
        for file in repo.files.values():
            if not file.path.startswith(prefix):
                continue
            parts = file.path[len(prefix) :].split("/")
            depth = len(parts) - 1 if recursive else min(1, len(parts) - 1)
            folders.update(prefix + "/".join(parts[:i]) for i in range(1, depth + 1))
            if recursive or len(parts) == 1:
                files.append(file.tree_entry())
        dirs = [
            {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            for d in sorted(folders)
        ]
        return dirs + files

    def _resolve(self, request: Any, kind: str, repo_id: str, revision: str, path: str) -> Any:
        from werkzeug.wrappers import Response

        repo = self._repo(request, kind, repo_id)
        token = self._token(request)
        if repo.gated and token not in self.granted_tokens:
            if token is None:
                raise HubError(
                    401,
                    "GatedRepo",
                    (
                        f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                        "to access it. Please log in."
                    ),
                )
            raise HubError(
                403,
                "GatedRepo",
                (
                    f"Access to model {repo_id} is restricted and you are not in the authorized list. Visit "
                    f"https://huggingface.co/{repo_id} to ask for access."
                ),
            )
        self._revision(repo, revision)
        file = repo.files.get(path)
        if file is None:
            raise HubError(404, "EntryNotFound", f'{path} does not exist on "{revision}"', commit=repo.sha)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{file.blob_id}"'}
        if file.sha256 is None:
            return self._file_response(request, file, headers)
        host = request.host.split(":")[-1]
        location = f"{request.scheme}://{self.cdn_host}:{host}/cdn-lfs/{file.sha256}"
        headers.update(
            {"X-Linked-Etag": f'"{file.sha256}"', "X-Linked-Size": str(file.size), "Location": location}
        )
        return Response(b"", status=302, headers=headers)

    @staticmethod
    def _file_response(request: Any, file: RepoFile, headers: dict[str, str]) -> Any:
        from werkzeug.wrappers import Response

        data = file.disk.read_bytes()
        status, body = 200, data
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if request.range is not None:
            span = request.range.range_for_length(len(data))
            if span is None:
                raise HubError(416, None, f"unsatisfiable range {request.headers.get('Range')}")
            body, status = data[span[0] : span[1]], 206
            headers["Content-Range"] = request.range.to_content_range_header(len(data))
        response = Response(b"" if request.method == "HEAD" else body, status=status, headers=headers)
        response.content_length = len(body)
        return response


def serve(
    root: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tokens: Sequence[str] = (),
    cdn_host: str = "localhost",
) -> None:
    """Serve ``root`` until killed; prints the url line once it accepts requests."""
    from werkzeug.serving import make_server

    app = LocalHub(Path(root), frozenset(tokens), cdn_host)
    server = make_server(host, port, app, threaded=True)
    print(f"local hub: serving {root} at http://{host}:{server.server_port}", flush=True)
    server.serve_forever()


# ----------------------------------------------------------------------------------------------
# the server as a child process (tests)


@dataclass
class LocalHubProcess:
    """A running server process: ``url`` for ``HF_ENDPOINT``; ``requests()`` / ``reset()``."""

    process: subprocess.Popen
    url: str

    def _control(self, what: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.url}/_hub/{what}", method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    def requests(self) -> list[dict[str, Any]]:
        """Every request served since the start or the last :meth:`reset` (control requests aside)."""
        return self._control("requests")["requests"]

    def reset(self) -> None:
        self._control("reset", "POST")


@contextmanager
def local_hub_process(
    root: Path, tokens: Sequence[str] = (), timeout: float = 30.0
) -> Iterator[LocalHubProcess]:
    """Start ``python -m drope_check.models.local_hub ROOT`` on a free port, yield it, stop it."""
    args = [sys.executable, "-m", "drope_check.models.local_hub", str(root)]
    for token in tokens:
        args += ["--token", token]
    src = str(Path(__file__).resolve().parents[2])
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        deadline = time.monotonic() + timeout
        line = process.stdout.readline() if process.stdout else ""
        match = re.search(r"at (http://\S+)", line)
        if match is None or time.monotonic() > deadline:
            raise RuntimeError(f"the local hub did not start (exit code {process.poll()}, said {line!r})")
        yield LocalHubProcess(process, match.group(1))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drope_check.models.local_hub",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", type=Path, help="folder with hub.json and one sub-folder per repo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument(
        "--token", action="append", default=[], help="a token granted access to the gated repos"
    )
    parser.add_argument(
        "--cdn-host",
        default="localhost",
        help="host name of the LFS redirects (another name for this server)",
    )
    args = parser.parse_args(argv)
    serve(args.root, host=args.host, port=args.port, tokens=args.token, cdn_host=args.cdn_host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
