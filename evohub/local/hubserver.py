"""A local, in-process server that speaks the subset of the Hugging Face Hub HTTP API evohub uses.

It lets the *real* ``huggingface_hub`` client pull, commit, tag and publish without the Hub:
the embedded demo publishes its winner to it, and the tests drive every Hub code path through
it (tests/hubserver.py). Repos live in memory; :meth:`FakeHub.export` writes one to a folder.

Endpoints: repo create; preupload, LFS batch (basic transfer) + PUT + verify, NDJSON commit; resolve
(HEAD/GET, Range); repo info (``siblings``, ``cardData`` from README front matter, ``blobs``); tree;
refs, commits, branch and tag create/delete; validate-yaml; whoami-v2; agent-harnesses. That covers
``create_repo``, ``create_commit``/``upload_file``/``upload_folder``, ``hf_hub_download``,
``snapshot_download``, ``model_info``/``dataset_info``/``repo_info``, ``list_repo_refs``,
``list_repo_commits``, ``create_branch``/``create_tag`` (and deletes), ``list_repo_files``/
``list_repo_tree``, ``repo_exists``/``revision_exists``/``file_exists`` and ``whoami``. Model and
dataset repos, ids always ``namespace/name``, live in memory. Pull requests are not implemented.

To point huggingface_hub at it: :class:`serve` (a context manager, for this process), or the
tests' ``use_hub``. The client reads its settings as ``huggingface_hub.constants.X`` at call
time: ``HF_HUB_OFFLINE`` must be False, ``HF_HUB_DISABLE_XET`` True (else uploads go through Xet
and ``upload_folder`` through its multi-commit pipeline), ``ENDPOINT`` (and the URL template and
``huggingface_hub.hf_api.api.endpoint``) the server's URL; subprocesses get the same through
``HF_ENDPOINT``, ``HF_HUB_OFFLINE=0``, ``HF_HUB_DISABLE_XET=1``. The token is the server's own
(``hf_test_token``), never a real one.

Callers inspect ``hub.repo(id, repo_type)`` (``commits``: sha -> :class:`Commit` with ``parent`` and
``files``; ``branches``, ``tags``), ``hub.files(id, revision)`` and ``hub.requests`` /
``hub.calls(method, path_contains)`` (method, raw path, lower-cased headers, body, status); they
seed repos with ``hub.commit(...)`` and inject failures with ``hub.fail_next(n, status,
path_contains, method)``. Preupload answers "lfs" for files of ``hub.lfs_min_size`` (1 MB) or more
or named ``*{hub.lfs_suffixes}``, else "regular". Writes need ``Authorization: Bearer <hub.token>``
(else 401) and private repos are not found without it. 404s carry ``X-Error-Code`` RepoNotFound /
RevisionNotFound / EntryNotFound, which the client turns into its error classes. Unknown endpoints
and server bugs answer 400 (retried neither by the client nor by evohub's ``with_retries``), saying
so in ``X-Error-Message``; bugs also land in ``hub.errors``, which the fixture asserts empty.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import threading
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, quote, unquote

TOKEN = "hf_test_token"
USER = "test-user"
HEX40 = re.compile(r"[0-9a-f]{40}")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
Response = tuple[int, dict[str, str], bytes]


def git_blob_oid(data: bytes) -> str:
    """Git's object id of a blob (what the client compares regular files against)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file git stores in place of an LFS file."""
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]  # full tree: path -> content
    lfs: frozenset[str]  # paths stored as LFS files
    title: str
    message: str = ""
    date: str = field(default_factory=_now)

    def entry(self, path: str) -> dict:
        """Tree-listing entry of a file (also the model_info sibling, renamed)."""
        data = self.files[path]
        if path not in self.lfs:
            return {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
        pointer = lfs_pointer(data)
        lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(pointer), "lfs": lfs}

    def local_oid(self, path: str) -> str:
        """The oid the client computes for a file (sha256 for LFS, git sha1 otherwise)."""
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs else git_blob_oid(data)


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool = False
    created_at: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tag_messages: dict[str, str] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> uploaded content
    #: ``refs/convert/<name>`` refs, e.g. the parquet conversion of a dataset behind a script
    converts: dict[str, str] = field(default_factory=dict)
    #: gated: metadata is public, files and auth-check answer 403 GatedRepo unless ``granted``
    gated: bool = False
    granted: bool = False

    def resolve(self, revision: str) -> str | None:
        """Commit sha of a branch, tag, convert ref (plain or ``refs/...``) or full sha; None if unknown."""
        for prefix, refs in (
            ("refs/heads/", self.branches),
            ("refs/tags/", self.tags),
            ("refs/convert/", self.converts),
        ):
            if revision.startswith(prefix):
                return refs.get(revision.removeprefix(prefix))
        sha = self.branches.get(revision) or self.tags.get(revision)
        return sha or (revision if revision in self.commits else None)

    def add_commit(self, branch: str, files: dict[str, bytes], lfs: set[str], title: str, message="",
                   sha: str | None = None):  # fmt: skip
        """Append a commit holding exactly ``files`` to ``branch`` (created if missing; a branch named
        ``refs/convert/<name>`` is a convert ref). ``sha`` gives the commit a known id (a stand-in
        of a real repo at its real commit); by default it is derived from the content."""
        table = self.converts if branch.startswith("refs/convert/") else self.branches
        branch = branch.removeprefix("refs/convert/")
        parent = table.get(branch)
        tree = sorted((p, git_blob_oid(d), p in lfs) for p, d in files.items())
        canon = json.dumps([self.repo_type, self.repo_id, parent, len(self.commits), title, message, tree])
        sha = sha or hashlib.sha1(canon.encode()).hexdigest()
        commit = Commit(sha, parent, dict(files), frozenset(lfs & files.keys()), title, message)
        self.commits[sha] = commit
        table[branch] = sha
        return commit

    def history(self, revision: str = "main") -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        sha, out = self.resolve(revision), []
        while sha is not None:
            out.append(self.commits[sha])
            sha = self.commits[sha].parent
        return out


@dataclass
class Recorded:
    method: str
    path: str  # raw request path, query string included
    headers: dict[str, str]  # names lower-cased
    body: bytes
    status: int = 0


@dataclass
class _Failure:
    remaining: int
    status: int
    path_contains: str
    method: str | None


class _HttpError(Exception):
    def __init__(self, response: Response):
        self.response = response


def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


def _error(status: int, message: str, code: str | None = None, headers: dict | None = None) -> Response:
    extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
    return _json({"error": message}, status, {**extra, **(headers or {})})


def card_data(readme: bytes | None) -> dict | None:
    """YAML front matter of a README.md, as the Hub's ``cardData``."""
    import yaml

    m = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", (readme or b"").decode("utf-8", "replace"), re.S)
    try:
        data = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class FakeHub:
    """The fake Hub's state (repos, request log, injected failures) and its server thread."""

    lfs_min_size = 1_000_000
    lfs_suffixes = (".safetensors", ".bin", ".png", ".gz")

    def __init__(self, token: str = TOKEN):
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        #: renamed repos: (type, old id) -> new id; requests for the old id are redirected (HTTP 307)
        self.renamed: dict[tuple[str, str], str] = {}
        self.requests: list[Recorded] = []
        self.errors: list[str] = []
        self.lock = threading.RLock()
        self._failures: list[_Failure] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def export(self, repo_id: str, dest: Path, revision: str = "main", repo_type: str = "model") -> list[str]:
        """Write a repo's files at ``revision`` into ``dest``; returns their paths."""
        dest = Path(dest)
        names = []
        for name, data in sorted(self.files(repo_id, revision, repo_type).items()):
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            names.append(name)
        return names

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        if (http := sys.modules.get("huggingface_hub.utils._http")) is not None:
            http.close_session()  # drop keep-alive connections to this server

    def __enter__(self) -> FakeHub:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers for tests ------------------------------------------------------------------
    def fail_next(self, n=1, status=503, path_contains: str = "", method: str | None = None):
        """Answer the next ``n`` requests whose raw path contains ``path_contains`` (and whose
        method is ``method``, if given) with ``status`` instead of serving them."""
        with self.lock:
            self._failures.append(_Failure(n, status, path_contains, method and method.upper()))

    def calls(self, method: str | None = None, path_contains: str = "") -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method) and path_contains in r.path]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision="main", repo_type="model") -> dict[str, bytes]:
        repo = self.repo(repo_id, repo_type)
        return dict(repo.commits[repo.resolve(revision) or revision].files)

    def create_repo(self, repo_id: str, repo_type="model", private=False) -> Repo:
        """A new repo whose ``main`` holds one commit with ``.gitattributes``, like the Hub's."""
        with self.lock:
            repo = self.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, private)
            repo.add_commit("main", {".gitattributes": GITATTRIBUTES}, set(), "initial commit")
            return repo

    def rename(self, old: str, new: str, repo_type: str = "model") -> None:
        """Rename a repo: requests naming ``old`` are redirected to ``new``, as the Hub does."""
        with self.lock:
            self.repos[(repo_type, new)] = repo = self.repos.pop((repo_type, old))
            repo.repo_id = new
            self.renamed[(repo_type, old)] = new

    def commit(
        self, repo_id, files: dict[str, bytes | None], *, repo_type="model", branch="main", lfs=(), title="seed",
        sha: str | None = None,
    ) -> Commit:  # fmt: skip
        """Commit ``files`` (None deletes) on top of ``branch`` (a new branch starts from main),
        creating the repo if needed. Paths in ``lfs`` are stored as LFS files; ``sha`` names the commit."""
        with self.lock:
            repo = self.repos.get((repo_type, repo_id)) or self.create_repo(repo_id, repo_type)
            known = repo.converts.get(branch.removeprefix("refs/convert/")) or repo.branches.get(branch)
            head = (
                repo.commits[known or repo.branches["main"]]
                if not branch.startswith("refs/convert/") or known
                else None
            )
            if head is None:  # a convert ref starts empty
                return repo.add_commit(branch, dict(files), set(lfs), title, sha=sha)  # type: ignore[arg-type]
            tree, lfs_paths = dict(head.files), set(head.lfs) | set(lfs)
            for path, data in files.items():
                if data is None:
                    tree.pop(path, None)
                else:
                    tree[path] = data
            return repo.add_commit(branch, tree, lfs_paths, title, sha=sha)

    def url_of(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.url}/{prefix}{repo.repo_id}"

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        for f in self._failures:
            if f.remaining > 0 and f.path_contains in path and f.method in (None, method):
                f.remaining -= 1
                return f
        return None


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the endpoint method below; each returns (status, headers, body)."""

    protocol_version = "HTTP/1.1"
    server_version = "hubserver/1.0"
    disable_nagle_algorithm = True  # else keep-alive responses stall ~40 ms (delayed ACK)
    #: (method, action after /api/{type}s/{ns}/{name}) -> endpoint method; GET needs no token
    API: ClassVar[dict[tuple[str, str], str]] = {
        ("GET", ""): "_repo_info", ("GET", "revision"): "_repo_info", ("GET", "tree"): "_tree",
        ("GET", "refs"): "_refs", ("GET", "commits"): "_commits", ("GET", "auth-check"): "_auth_check",
        ("POST", "preupload"): "_preupload", ("POST", "commit"): "_commit",
        ("POST", "branch"): "_create_branch", ("POST", "tag"): "_create_tag",
        ("DELETE", "branch"): "_delete_ref", ("DELETE", "tag"): "_delete_ref",
    }  # fmt: skip

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass

    def _handle(self) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        self.hub, self.body = hub, self._read_body()
        path, _, query = self.path.partition("?")
        self.query = {k: v[-1] for k, v in parse_qs(query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        record = Recorded(self.command, self.path, headers, self.body)
        with hub.lock:
            hub.requests.append(record)
            failure = hub._take_failure(self.command, self.path)
            try:
                if failure is not None:
                    raise _HttpError(_error(failure.status, f"injected failure {failure.status}"))
                response = self._route([unquote(s) for s in path.strip("/").split("/")])
            except _HttpError as e:
                response = e.response
            except Exception:
                hub.errors.append(f"{self.command} {self.path}\n{traceback.format_exc()}")
                response = _error(400, f"hubserver crashed on {self.command} {path} (see hub.errors)")
        record.status = response[0]
        self._send(response)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)

    def _send(self, response: Response) -> None:
        status, headers, body = response
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- routing and shared lookups ------------------------------------------------------------
    def _route(self, segs: list[str]) -> Response:
        method = self.command
        if segs[0] == "api":
            return self._route_api(segs[1:])
        if segs[0] == "lfs-upload" and method == "PUT" and len(segs) == 2:
            return self._lfs_put(segs[1])
        if segs[0] == "lfs-verify" and method == "POST":
            return self._lfs_verify()
        repo_type = segs.pop(0)[:-1] if segs[0] in ("datasets", "spaces") else "model"
        if segs[2:] == ["info", "lfs", "objects", "batch"] and segs[1].endswith(".git"):
            return self._lfs_batch(self._repo(repo_type, f"{segs[0]}/{segs[1][:-4]}", write=True))
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            repo = self._repo(repo_type, f"{segs[0]}/{segs[1]}")
            return self._resolve(repo, segs[3], "/".join(segs[4:]))
        return self._not_implemented()

    def _route_api(self, segs: list[str]) -> Response:
        method = self.command
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if segs == ["whoami-v2"]:
            if not self._authorized():
                return _error(401, "Invalid credentials in Authorization header")
            return _json({"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}})
        if segs == ["agent-harnesses"]:
            return _json({"harnesses": {}, "standardEnvVars": []})
        self.action = segs[3] if len(segs) > 3 else ""
        name = self.API.get((method, self.action))
        if len(segs) < 3 or segs[0] not in ("models", "datasets", "spaces") or name is None:
            return self._not_implemented()
        repo = self._repo(segs[0][:-1], f"{segs[1]}/{segs[2]}", write=method != "GET")
        return getattr(self, name)(repo, segs[4:])

    def _not_implemented(self) -> Response:
        return _error(400, f"hubserver does not implement {self.command} {self.path}")

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        if write and not self._authorized():
            raise _HttpError(_error(401, "Invalid credentials in Authorization header"))
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None and (new := self.hub.renamed.get((repo_type, repo_id))) is not None:
            moved = self.path.replace(quote(repo_id, safe="/"), quote(new, safe="/"), 1)
            raise _HttpError((307, {"Location": moved, "Content-Type": "text/plain"}, f"moved to {new}".encode()))
        if repo is None or (repo.private and not self._authorized()):
            raise _HttpError(_error(404, "Repository not found", "RepoNotFound"))
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        sha = repo.resolve(revision)
        if sha is None:
            raise _HttpError(_error(404, f"Invalid rev id: {revision}", "RevisionNotFound"))
        return repo.commits[sha]

    def _payload(self) -> dict:
        return json.loads(self.body or b"{}")

    # -- repos, info, listings -----------------------------------------------------------------
    def _create_repo(self) -> Response:
        if not self._authorized():
            return _error(401, "Invalid credentials in Authorization header")
        p = self._payload()
        repo_id, repo_type = f"{p.get('organization') or USER}/{p['name']}", p.get("type") or "model"
        if (repo_type, repo_id) in self.hub.repos:
            url = self.hub.url_of(self.hub.repo(repo_id, repo_type))
            return _json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        private = p.get("visibility") == "private" or bool(p.get("private"))
        repo = self.hub.create_repo(repo_id, repo_type, private)
        return _json({"url": self.hub.url_of(repo), "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> Response:
        import yaml

        text = self._payload().get("content", "")
        m = re.match(r"---\s*\n(.*?)\n---", text, re.S)
        try:
            yaml.safe_load(m.group(1)) if m else None
        except yaml.YAMLError as e:
            return _json({"errors": [{"message": str(e)}], "warnings": []}, 400)
        return _json({"errors": [], "warnings": []})

    def _auth_check(self, repo: Repo, args: list[str]) -> Response:
        if repo.gated and not repo.granted:
            return _error(403, f"Access to model {repo.repo_id} is restricted: ask for access", "GatedRepo")
        return _json({})

    def _repo_info(self, repo: Repo, args: list[str]) -> Response:
        commit = self._commit_at(repo, "/".join(args) if args else "main")
        card = card_data(commit.files.get("README.md"))
        tags = (card or {}).get("tags") or []
        siblings = [{"rfilename": p} for p in sorted(commit.files)]
        if self.query.get("blobs", "").lower() in ("1", "true"):
            for s in siblings:
                e = commit.entry(s["rfilename"])
                s.update(size=e["size"], blobId=e["oid"])
                if "lfs" in e:
                    s["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": e["lfs"]["pointerSize"]}
        return _json({
            "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.sha, "private": repo.private,
            "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0, "cardData": card,
            "tags": [tags] if isinstance(tags, str) else list(tags), "siblings": siblings,
            "createdAt": repo.created_at, "lastModified": commit.date,
        })  # fmt: skip

    def _tree(self, repo: Repo, args: list[str]) -> Response:
        commit = self._commit_at(repo, args[0])
        base = "/".join(args[1:]).strip("/")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        entries: dict[str, dict] = {}
        for path in sorted(commit.files):
            if base and not path.startswith(base + "/"):
                continue
            parts = path.split("/")
            depth = base.count("/") + 1 if base else 0
            for i in range(depth + 1, len(parts)):  # folders between base and the file
                folder = "/".join(parts[:i])
                if recursive or i == depth + 1:
                    oid = hashlib.sha1(f"{commit.sha}:{folder}".encode()).hexdigest()
                    entries.setdefault(folder, {"type": "directory", "path": folder, "oid": oid, "size": 0})
            if recursive or len(parts) == depth + 1:
                entries[path] = commit.entry(path)
        if base and not entries:
            return _error(404, f"{base} does not exist", "EntryNotFound")
        return _json([entries[p] for p in sorted(entries)])

    def _refs(self, repo: Repo, args: list[str]) -> Response:
        def refs(table: dict[str, str], kind: str) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": s} for n, s in table.items()]

        tables = {"branches": refs(repo.branches, "heads"), "tags": refs(repo.tags, "tags")}
        return _json({**tables, "converts": refs(repo.converts, "convert"), "pullRequests": []})

    def _commits(self, repo: Repo, args: list[str]) -> Response:
        self._commit_at(repo, args[0])
        return _json(
            [
                {"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": USER}]}
                for c in repo.history(args[0])
            ]
        )

    # -- refs --------------------------------------------------------------------------------
    def _create_branch(self, repo: Repo, args: list[str]) -> Response:
        start = self._commit_at(repo, self._payload().get("startingPoint") or "main")
        if args[0] in repo.branches:
            return _error(409, f"Reference already exists: refs/heads/{args[0]}")
        repo.branches[args[0]] = start.sha
        return _json({})

    def _create_tag(self, repo: Repo, args: list[str]) -> Response:
        commit, p = self._commit_at(repo, args[0]), self._payload()
        if p["tag"] in repo.tags:
            return _error(409, f"Reference already exists: refs/tags/{p['tag']}")
        repo.tags[p["tag"]] = commit.sha
        repo.tag_messages[p["tag"]] = p.get("message", "")
        return _json({})

    def _delete_ref(self, repo: Repo, args: list[str]) -> Response:
        if (repo.branches if self.action == "branch" else repo.tags).pop(args[0], None) is None:
            return _error(404, f"Invalid rev id: {args[0]}", "RevisionNotFound")
        return _json({})

    # -- uploads -------------------------------------------------------------------------------
    def _preupload(self, repo: Repo, args: list[str]) -> Response:
        head = self._commit_at(repo, args[0])
        files = []
        for f in self._payload()["files"]:
            lfs = f["size"] >= self.hub.lfs_min_size or f["path"].endswith(self.hub.lfs_suffixes)
            oid = head.local_oid(f["path"]) if f["path"] in head.files else None
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return _json({"files": files, "commitOid": head.sha})

    def _lfs_batch(self, repo: Repo) -> Response:
        p = self._payload()
        if p.get("operation") != "upload":
            return _error(400, "hubserver only implements LFS uploads")
        where = f"repo_type={repo.repo_type}&repo_id={quote(repo.repo_id, safe='')}"
        objects = []
        for o in p["objects"]:
            obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in repo.lfs_objects:
                obj["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{o['oid']}?{where}"},
                    "verify": {"href": f"{self.hub.url}/lfs-verify?{where}"},
                }
            objects.append(obj)
        body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return _json(body, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_repo(self) -> Repo:
        repo = self.hub.repos.get((self.query.get("repo_type", ""), self.query.get("repo_id", "")))
        if repo is None:
            raise _HttpError(_error(404, "no such repo", "RepoNotFound"))
        return repo

    def _lfs_put(self, oid: str) -> Response:
        repo = self._lfs_repo()
        if hashlib.sha256(self.body).hexdigest() != oid:
            return _error(400, f"content does not hash to {oid}")
        repo.lfs_objects[oid] = self.body
        return 200, {}, b""

    def _lfs_verify(self) -> Response:
        p, repo = self._payload(), self._lfs_repo()
        if p["oid"] not in repo.lfs_objects or len(repo.lfs_objects[p["oid"]]) != p["size"]:
            return _error(404, f"LFS object {p['oid']} not found")
        return _json({"success": True})

    def _commit(self, repo: Repo, args: list[str]) -> Response:
        branch = args[0]
        if self.query.get("create_pr"):
            return _error(400, "hubserver does not implement pull requests")
        if branch not in repo.branches:
            return _error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head = repo.commits[repo.branches[branch]]
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        if header.get("parentCommit") not in (None, head.sha):
            return _error(412, "A commit has happened since. Please refresh and try again.")
        files, lfs = dict(head.files), set(head.lfs)
        for op in (x for x in lines if x["key"] != "header"):
            key, v = op["key"], op["value"]
            if key == "file":
                files[v["path"]] = base64.b64decode(v["content"])
                lfs.discard(v["path"])
            elif key == "lfsFile":
                if v["oid"] not in repo.lfs_objects:
                    return _error(422, f"LFS object {v['oid']} was never uploaded")
                files[v["path"]] = repo.lfs_objects[v["oid"]]
                lfs.add(v["path"])
            elif key == "deletedFile":
                if files.pop(v["path"], None) is None:
                    return _error(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(v["path"].rstrip("/") + "/")}
            else:
                return _error(400, f"hubserver does not implement commit operation {key!r}")
        commit = repo.add_commit(branch, files, lfs, header.get("summary", ""), header.get("description", ""))
        url = f"{self.hub.url_of(repo)}/commit/{commit.sha}"
        return _json({"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": None})

    # -- downloads -----------------------------------------------------------------------------
    def _resolve(self, repo: Repo, revision: str, path: str) -> Response:
        if repo.gated and not repo.granted:
            return _error(403, f"Access to {repo.repo_id} is restricted: ask for access", "GatedRepo")
        commit = self._commit_at(repo, revision)
        if path not in commit.files:
            return _error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        data, entry = commit.files[path], commit.entry(path)
        headers = {
            "X-Repo-Commit": commit.sha, "ETag": f'"{entry["oid"]}"', "Content-Length": str(len(data)),
            "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
        }  # fmt: skip
        if "lfs" in entry:
            headers.update({"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": str(len(data))})
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m and int(m.group(1)) < len(data):
            start, end = int(m.group(1)), int(m.group(2) or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            headers["Content-Length"] = str(end + 1 - start)
            return 206, headers, data[start : end + 1]
        return 200, headers, data


def start_hub(token: str = TOKEN) -> FakeHub:
    """Start a fake Hub on 127.0.0.1 (random port); ``.stop()`` it when done."""
    return FakeHub(token)


class serve:
    """Run a local Hub and point huggingface_hub at it (in this process), restoring on exit.

    >>> with serve(Path(".cache/hf-local")) as hub:        # doctest: +SKIP
    ...     publish_run(run_dir, "me/model")
    """

    def __init__(self, home: Path):
        self.home = Path(home)
        self._saved: list = []

    def __enter__(self) -> FakeHub:
        import os

        import huggingface_hub.constants as constants
        from huggingface_hub import hf_api

        self.hub = start_hub()
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            "HF_ENDPOINT": self.hub.url,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": self.hub.token,
        }
        self._env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        patches = {
            "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "ENDPOINT": self.hub.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": self.hub.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_CACHE": str(self.home / "hub"), "HF_TOKEN_PATH": str(self.home / "token"),
            "AGENT_HARNESSES_PATH": str(self.home / "agents.json"),
        }  # fmt: skip
        for name, value in patches.items():
            if hasattr(constants, name):
                self._saved.append((constants, name, getattr(constants, name)))
                setattr(constants, name, value)
        self._saved.append((hf_api.api, "endpoint", hf_api.api.endpoint))
        hf_api.api.endpoint = self.hub.url
        try:
            from huggingface_hub.utils import _detect_agent

            self._saved.append((_detect_agent, "_registry", getattr(_detect_agent, "_registry", None)))
            _detect_agent._registry = {"harnesses": {}, "standardEnvVars": []}
        except (ImportError, AttributeError):
            pass
        return self.hub

    def __exit__(self, *exc) -> None:
        import os

        for obj, name, value in reversed(self._saved):
            setattr(obj, name, value)
        for k, v in self._env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.hub.stop()
