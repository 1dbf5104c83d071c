"""A local Hugging Face Hub for the tests: a small HTTP server on loopback that speaks the part of the Hub's API the
real clients use (`huggingface_hub`, and `datasets` and `transformers` through it), so that the app's Hub code path
runs offline with nothing mocked: `HF_ENDPOINT=hub.url` points the clients at it.

    hub = LocalHub(folder).start()       # serves the repos under folder/{models,datasets}/ORG/NAME/
    write_smollm_corpus(hub.repo_folder("dataset", CORPUS_REPO), documents, tokenizer)
    ...
    hub.close()

What it answers, as the Hub does (status codes, `X-Error-Code` headers, JSON shapes):
- `GET /api/{models,datasets}/ORG/NAME[/revision/REV]`: repo info (sha, siblings, the card's YAML as cardData);
- `GET /api/.../tree/REV[/PATH]`: listings (`HfFileSystem`: datasets' globs and file sizes);
- `HEAD`/`GET [/datasets]/ORG/NAME/resolve/REV/PATH`, with `Range` (206): metadata and downloads; large files
  carry the LFS headers (`X-Linked-Etag`, `X-Linked-Size`) that `hf_hub_download` checks;
- uploads: `POST /api/repos/create`, `/api/validate-yaml`, `.../preupload/REV` (every file "regular", sent
  inline), `.../commit/REV`: committed files are served from then on, so a pushed model loads by its repo id;
- refusals configured per repo (`refuse`: gated, missing, bad token) and faults injected on data downloads
  (`fail`: answers 500 or drops the connection mid-body, a given number of times or until `recover`).

Anything else is answered 404 "not served by the local hub: METHOD PATH", so that a client that starts asking for
more (e.g. `paths-info`, which none of the tested flows requests today) fails loudly, naming it.

Every request is logged (`requests`) with the process that made it and that process's `RANK` (torchrun's): the
HTTP requests themselves do not say which rank sent them, and the tests check which rank read which shard.
"""

import base64
import fnmatch
import hashlib
import http.server
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import psutil  # accelerate's dependency: which process holds a client's socket (see `client_process`)
import yaml

KINDS = {"models": "model", "datasets": "dataset"}
LFS_THRESHOLD = 10 * 2**20  # the Hub keeps files above 10 MB in LFS, and weights and data files of any size
LFS_SUFFIXES = (".safetensors", ".parquet", ".bin", ".gguf")
CHUNK = 2**20


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str  # the URL path, decoded
    status: int
    repo: str | None = None  # "dataset:ORG/NAME"
    file: str | None = None  # the file in the repo, for resolve requests
    range: str | None = None  # the Range header
    sent: int = 0  # body bytes sent
    pid: int | None = None  # the client process
    rank: int | None = None  # its RANK environment variable (torchrun), if any
    fault: str | None = None  # "500" or "drop" when a fault was injected


@dataclass
class Fault:
    pattern: str  # fnmatch pattern of the files whose downloads fail ("cosmopedia-v2/*")
    mode: str  # "500": answer 500; "drop": send the headers and half the body, then close the connection
    remaining: int | None  # failures left; None: until `recover`


def git_blob_sha(data_path: str) -> str:
    """The git object id of a file: what the Hub gives as `oid` and `ETag` for files outside LFS."""
    digest = hashlib.sha1(f"blob {os.path.getsize(data_path)}\0".encode())
    with open(data_path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of(data_path: str) -> str:
    digest = hashlib.sha256()
    with open(data_path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def client_process(client: tuple[str, int], server: tuple[str, int]) -> tuple[int | None, int | None]:
    """(pid, RANK) of the local process whose TCP socket `client` is connected to `server`, (None, None) when the
    system does not say."""
    try:
        connections = psutil.net_connections(kind="tcp4")
    except psutil.Error:
        return None, None
    for connection in connections:
        if connection.laddr and connection.raddr and tuple(connection.laddr) == tuple(client) \
                and tuple(connection.raddr) == tuple(server) and connection.pid:
            try:
                environ = psutil.Process(connection.pid).environ()
            except psutil.Error:
                return connection.pid, None
            rank = environ.get("RANK")
            return connection.pid, int(rank) if rank is not None else None
    return None, None


class Repo:
    """A repo served from a folder: its files, their ids, and a commit sha that changes with every commit."""

    def __init__(self, kind: str, repo_id: str, folder: str):
        self.kind, self.repo_id, self.folder = kind, repo_id, folder
        self.lock = threading.Lock()
        self._ids: dict[str, tuple[int, float, str, str | None]] = {}  # path -> (size, mtime, oid, lfs sha256)
        self._sha: tuple[tuple, str] | None = None  # (the folders' mtimes it was computed for, the sha)
        self.shas: set[str] = set()  # every sha given out: a client may still ask for files at an older one

    def files(self) -> list[str]:
        found = []
        for root, _, names in os.walk(self.folder):
            for name in names:
                found.append(os.path.relpath(os.path.join(root, name), self.folder).replace(os.sep, "/"))
        return sorted(found)

    def ids(self, path: str) -> tuple[str, str | None]:
        """(git oid, LFS sha256 or None) of a file, computed once per version of it."""
        full = os.path.join(self.folder, path)
        stat = os.stat(full)
        with self.lock:
            known = self._ids.get(path)
            if known is None or known[:2] != (stat.st_size, stat.st_mtime):
                lfs = stat.st_size > LFS_THRESHOLD or path.endswith(LFS_SUFFIXES)
                sha = sha256_of(full) if lfs else None
                # an LFS file's git object is its pointer file, whose id is what the Hub lists as `oid`
                oid = hashlib.sha1(f"lfs pointer {sha} {stat.st_size}".encode()).hexdigest() if lfs else \
                    git_blob_sha(full)
                known = self._ids[path] = (stat.st_size, stat.st_mtime, oid, sha)
        return known[2], known[3]

    def sha(self) -> str:
        """The commit sha: a digest of every file's id, computed again when a file was added or removed (a folder's
        mtime changed) or after a commit (`changed`); hashing every file's id per request costs milliseconds."""
        folders = tuple((root, os.stat(root).st_mtime_ns) for root, _, _ in os.walk(self.folder))
        if self._sha is None or self._sha[0] != folders:
            digest = hashlib.sha1()
            for path in self.files():
                digest.update(f"{path}\0{self.ids(path)[0]}\0".encode())
            self._sha = folders, digest.hexdigest()
            self.shas.add(self._sha[1])
        return self._sha[1]

    def changed(self) -> None:
        self._sha = None

    def url(self, endpoint: str) -> str:
        return f"{endpoint}/{'' if self.kind == 'model' else self.kind + 's/'}{self.repo_id}"

    def entry(self, path: str) -> dict:
        full = os.path.join(self.folder, path)
        if os.path.isdir(full):
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        oid, lfs = self.ids(path)
        size = os.path.getsize(full)
        entry = {"type": "file", "oid": oid, "size": size, "path": path}
        if lfs:
            entry["lfs"] = {"oid": lfs, "size": size, "pointerSize": 134}
        return entry

    def card_data(self) -> dict | None:
        readme = os.path.join(self.folder, "README.md")
        if not os.path.isfile(readme):
            return None
        text = open(readme, encoding="utf-8").read()
        match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        return yaml.safe_load(match.group(1)) if match else None

    def info(self) -> dict:
        info = {"_id": hashlib.sha1(self.repo_id.encode()).hexdigest()[:24], "id": self.repo_id,
                "author": self.repo_id.split("/")[0], "sha": self.sha(), "private": False, "gated": False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "lastModified": "2024-07-16T00:00:00.000Z",
                "createdAt": "2024-07-15T00:00:00.000Z", "siblings": [{"rfilename": path} for path in self.files()]}
        card = self.card_data()
        if card is not None:
            info["cardData"] = card
        if self.kind == "model":
            info["modelId"] = self.repo_id
        return info


class LocalHub:
    """The server (see the module's docstring). It binds its port when created (so that HF_ENDPOINT can be set before
    `huggingface_hub` reads it at import) and serves from `start` to `close`, in a thread of this process: nothing is
    left behind when the process ends."""

    def __init__(self, folder: str):
        self.folder = folder
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.refusals: dict[str, tuple[int, str | None, str]] = {}  # repo id -> (status, X-Error-Code, message)
        self.lock = threading.Lock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
        self.server.daemon_threads = True  # idle keep-alive connections must not hold up `close`
        self.server.hub = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "LocalHub":
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- repos ----

    def repo_folder(self, kind: str, repo_id: str) -> str:
        """The folder that holds `repo_id`'s files (created): write files there to add them to the repo."""
        return self.repo(kind, repo_id, create=True).folder

    def repo(self, kind: str, repo_id: str, create: bool = False) -> Repo | None:
        with self.lock:
            if (kind, repo_id) not in self._repos:
                folder = os.path.join(self.folder, f"{kind}s", *repo_id.split("/"))
                if not (create or os.path.isdir(folder)):
                    return None
                os.makedirs(folder, exist_ok=True)
                self._repos[kind, repo_id] = Repo(kind, repo_id, folder)
            return self._repos[kind, repo_id]

    def refuse(self, repo_id: str, status: int, code: str | None, message: str) -> None:
        """Answer every request about `repo_id` with `status` and these error headers."""
        self.refusals[repo_id] = (status, code, message)

    # ---- faults ----

    def fail(self, pattern: str, mode: str = "500", times: int | None = None) -> Fault:
        """Make the next `times` downloads (GET) of files matching `pattern` fail (every one until `recover` when
        `times` is None)."""
        if mode not in ("500", "drop"):
            raise ValueError(f"fault mode must be 500 or drop, got {mode!r}")
        fault = Fault(pattern, mode, times)
        with self.lock:
            self.faults.append(fault)
        return fault

    def recover(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_fault(self, path: str) -> str | None:
        with self.lock:
            for fault in self.faults:
                if fnmatch.fnmatch(path, fault.pattern) and fault.remaining != 0:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault.mode
        return None

    # ---- the log ----

    def log(self, request: Request) -> None:
        with self.lock:
            self.requests.append(request)

    def downloads(self, since: int = 0, pattern: str = "*") -> list[Request]:
        """The downloads of files matching `pattern` logged since index `since`."""
        return downloads(self.requests[since:], pattern)


def downloads(requests: list[Request], pattern: str = "*") -> list[Request]:
    """The GET requests among `requests` that sent (some of) a file matching `pattern`."""
    return [r for r in requests if r.method == "GET" and r.file is not None and fnmatch.fnmatch(r.file, pattern)
            and r.status in (200, 206)]


class HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: the clients reuse their connections
    # headers and body go out in two writes: with Nagle's algorithm the second waits for the client's delayed ACK of
    # the first, 40 ms per request on Linux, which no real server costs
    disable_nagle_algorithm = True
    server_version = "LocalHub"

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def setup(self):
        super().setup()
        self.client = None  # (pid, RANK) of the process at the other end, looked up once per connection

    def log_message(self, *args):
        pass

    # ---- answers ----

    def send(self, status: int, body: bytes = b"", headers: dict | None = None, request: Request | None = None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.record(request, status, len(body) if self.command != "HEAD" else 0)

    def send_json(self, payload, status: int = 200, request: Request | None = None):
        self.send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"}, request)

    def send_error_answer(self, status: int, code: str | None, message: str, request: Request | None = None):
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self.send(status, json.dumps({"error": message}).encode(), headers, request)

    def record(self, request: Request | None, status: int, sent: int):
        if self.client is None:
            self.client = client_process(self.client_address, self.server.server_address)
        pid, rank = self.client
        request = request or Request(self.command, self.url_path, status)
        request.status, request.sent, request.pid, request.rank = status, sent, pid, rank
        self.hub.log(request)

    # ---- routing ----

    @property
    def url_path(self) -> str:
        return unquote(urlsplit(self.path).path)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def do_POST(self):
        self.route()

    def route(self):
        path = self.url_path
        api = re.match(r"^/api/(models|datasets)/([^/]+/[^/]+?)(?:/(revision|tree|preupload|commit)"
                       r"/([^/]+)(?:/(.*))?)?/?$", path)
        resolve = re.match(r"^(/datasets)?/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if self.command == "POST" and path == "/api/repos/create":
            return self.create_repo()
        if path == "/api/agent-harnesses":  # huggingface_hub's telemetry: an empty registry detects no agent
            return self.send_json({"standardEnvVars": [], "harnesses": {}})
        if self.command == "POST" and path == "/api/validate-yaml":  # the model card's metadata, before an upload
            self.body()
            return self.send_json({"errors": [], "warnings": []})
        if api:
            kind, repo_id, action, revision, rest = KINDS[api.group(1)], *api.groups()[1:]
        elif resolve and not path.startswith("/api/"):
            kind, repo_id, action, revision, rest = ("dataset" if resolve.group(1) else "model"), resolve.group(2), \
                "resolve", resolve.group(3), resolve.group(4)
        else:
            self.body()
            return self.send_error_answer(404, None, f"not served by the local hub: {self.command} {path}")
        request = Request(self.command, path, 0, repo=f"{kind}:{repo_id}",
                          file=rest if action == "resolve" else None, range=self.headers.get("Range"))
        if repo_id in self.hub.refusals:
            self.body()
            return self.send_error_answer(*self.hub.refusals[repo_id], request=request)
        repo = self.hub.repo(kind, repo_id)
        if repo is None:
            self.body()
            return self.send_error_answer(404, "RepoNotFound", "Repository not found", request)
        if revision not in (None, "main", repo.sha()) and revision not in repo.shas:
            self.body()
            return self.send_error_answer(404, "RevisionNotFound", f"Invalid rev id: {revision}", request)
        if action in (None, "revision"):
            return self.send_json(repo.info(), request=request)
        if action == "tree":
            return self.tree(repo, rest or "", request)
        if action == "preupload":
            files = json.loads(self.body())["files"]
            return self.send_json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                             for f in files]}, request=request)
        if action == "commit":
            return self.commit(repo, request)
        return self.resolve(repo, rest, request)

    # ---- listings ----

    def tree(self, repo: Repo, folder: str, request: Request):
        recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0].lower() == "true"
        base = os.path.join(repo.folder, folder)
        if not os.path.isdir(base):
            return self.send_error_answer(404, "EntryNotFound", f"{folder} does not exist", request)
        paths = []
        for root, dirs, names in os.walk(base):
            for name in sorted(dirs) + sorted(names):
                paths.append(os.path.relpath(os.path.join(root, name), repo.folder).replace(os.sep, "/"))
            if not recursive:
                break
        self.send_json([repo.entry(path) for path in paths], request=request)

    # ---- downloads ----

    def resolve(self, repo: Repo, path: str, request: Request):
        full = os.path.join(repo.folder, path)
        if not os.path.isfile(full):
            return self.send_error_answer(404, "EntryNotFound", f"{path} does not exist", request)
        size = os.path.getsize(full)
        oid, lfs = repo.ids(path)
        headers = {"X-Repo-Commit": repo.sha(), "ETag": f'"{lfs or oid}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{lfs}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        ranged = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))  # what HfFileSystem asks for
        if ranged:
            start, end, status = int(ranged.group(1)), min(int(ranged.group(2) or size - 1), size - 1), 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        fault = self.hub.take_fault(path) if self.command == "GET" else None
        if fault == "500":
            request.fault = fault
            return self.send_error_answer(500, None, "Internal Error - We're working hard to fix this as soon as "
                                                     "possible!", request)
        length = max(0, end - start + 1)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return self.record(request, status, 0)
        if fault == "drop":  # the connection lost mid-body: the client sees fewer bytes than announced
            length //= 2
            request.fault = fault
            self.close_connection = True
        sent = 0
        with open(full, "rb") as f:
            f.seek(start)
            while sent < length:
                chunk = f.read(min(CHUNK, length - sent))
                self.wfile.write(chunk)
                sent += len(chunk)
        self.record(request, status, sent)

    # ---- uploads ----

    def create_repo(self):
        payload = json.loads(self.body())
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        repo = self.hub.repo(payload.get("type") or "model", repo_id, create=True)
        self.send_json({"url": repo.url(self.hub.url), "name": repo_id})

    def commit(self, repo: Repo, request: Request):
        """The NDJSON commit: a header, then one line per operation; files come inline (base64), as "regular"."""
        items = [json.loads(line) for line in self.body().splitlines()]
        unknown = {item["key"] for item in items} - {"header", "file"}
        if unknown:  # deletions, LFS files, copies: no tested flow makes them
            return self.send_error_answer(400, None, f"not served by the local hub: commit {sorted(unknown)}",
                                          request)
        for item in items:
            if item["key"] == "file":
                target = os.path.join(repo.folder, item["value"]["path"])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(base64.b64decode(item["value"]["content"]))
        repo.changed()  # a file written over in place leaves its folder's mtime as it was
        sha = repo.sha()
        self.send_json({"commitUrl": f"{repo.url(self.hub.url)}/commit/{sha}", "commitOid": sha,
                        "pullRequestUrl": None}, request=request)


# ---- the repos of the default recipe ----

CORPUS_REPO = "HuggingFaceTB/smollm-corpus"
MODEL_REPO = "HuggingFaceTB/SmolLM2-135M"
# the real repo's shard counts, so the real file names: cosmopedia-v2/train-00000-of-00104.parquet ...
CORPUS_SHARDS = {"cosmopedia-v2": 104, "fineweb-edu-dedup": 234}
AUDIENCES = ("general", "college_students", "grade_school_students", "researchers")
FORMATS = ("textbook", "blogpost", "story", "wikihow")

CORPUS_README = """---
license: odc-by
dataset_info:
- config_name: cosmopedia-v2
  features:
  - name: prompt
    dtype: string
  - name: text
    dtype: string
  - name: token_length
    dtype: int64
  - name: audience
    dtype: string
  - name: format
    dtype: string
  - name: seed_data
    dtype: string
  splits:
  - name: train
    num_bytes: {cosmopedia-v2 bytes}
    num_examples: {cosmopedia-v2}
- config_name: fineweb-edu-dedup
  features:
  - name: text
    dtype: string
  - name: id
    dtype: string
  - name: metadata
    struct:
    - name: dump
      dtype: string
    - name: url
      dtype: string
    - name: date
      dtype: string
    - name: file_path
      dtype: string
    - name: language
      dtype: string
    - name: language_score
      dtype: float64
    - name: token_count
      dtype: int64
    - name: score
      dtype: float64
    - name: int_score
      dtype: int64
  splits:
  - name: train
    num_bytes: {fineweb-edu-dedup bytes}
    num_examples: {fineweb-edu-dedup}
configs:
- config_name: cosmopedia-v2
  data_files:
  - split: train
    path: cosmopedia-v2/train-*
- config_name: fineweb-edu-dedup
  data_files:
  - split: train
    path: fineweb-edu-dedup/train-*
---
# SmolLM-Corpus (local test copy)

The layout of HuggingFaceTB/smollm-corpus with CPython's documentation as text.
"""


def corpus_rows(config: str, texts: list[str], first: int, token_counts: list[int]) -> dict:
    """The columns of `config`'s real parquet files, for `texts` (documents number `first` on)."""
    if config == "cosmopedia-v2":
        formats = [FORMATS[(first + i) % len(FORMATS)] for i in range(len(texts))]
        audiences = [AUDIENCES[(first + i) % len(AUDIENCES)] for i in range(len(texts))]
        return {"prompt": [f"Write a {fmt} for {audience} about this passage:\n{text[:80]}"
                           for fmt, audience, text in zip(formats, audiences, texts)],
                "text": texts, "token_length": token_counts, "audience": audiences, "format": formats,
                "seed_data": ["web_samples_v2"] * len(texts)}
    return {"text": texts, "id": [f"<urn:uuid:{hashlib.md5(text.encode()).hexdigest()}>" for text in texts],
            "metadata": [{"dump": "CC-MAIN-2024-10", "url": f"https://docs.python.org/3/{first + i}", "date": "2024-02-20T12:00:00Z",
                          "file_path": "s3://commoncrawl/crawl-data/CC-MAIN-2024-10/segments/0.warc.gz",
                          "language": "en", "language_score": 0.9, "token_count": count, "score": 3.5,
                          "int_score": 4} for i, count in enumerate(token_counts)]}


def write_smollm_corpus(folder: str, documents: list[str], tokenizer, shards: dict[str, int] = CORPUS_SHARDS,
                        row_group_size: int = 64) -> None:
    """HuggingFaceTB/smollm-corpus's layout in `folder`: its README (configs and features) and each config's parquet
    shards, `documents` dealt out between the configs in turn and cut into contiguous shards, in row groups of
    `row_group_size` documents (the datasets reader's batches)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    written = {}  # config -> its shards' texts
    for index, (config, count) in enumerate(shards.items()):
        texts = documents[index::len(shards)]
        os.makedirs(os.path.join(folder, config), exist_ok=True)
        bounds = [len(texts) * k // count for k in range(count + 1)]
        written[config] = [texts[bounds[k]:bounds[k + 1]] for k in range(count)]
        for k, shard in enumerate(written[config]):
            counts = [len(ids) for ids in tokenizer(shard, add_special_tokens=False)["input_ids"]] if shard else []
            table = pa.table(corpus_rows(config, shard, bounds[k], counts))
            pq.write_table(table, os.path.join(folder, config, f"train-{k:05d}-of-{count:05d}.parquet"),
                           row_group_size=row_group_size)
    readme = CORPUS_README
    for config, texts in written.items():
        readme = readme.replace("{" + config + "}", str(sum(map(len, texts))))
        readme = readme.replace("{" + config + " bytes}", str(sum(len(text.encode()) for shard in texts
                                                                  for text in shard)))
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme)


def write_tokenizer_files(folder: str, tokenizer_dir: str) -> None:
    """The real SmolLM2 tokenizer's files, as in HuggingFaceTB/SmolLM2-135M."""
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(folder, name))


def write_smollm2_weights(folder: str, gguf_folder: str, gguf_name: str) -> None:
    """HuggingFaceTB/SmolLM2-135M's Llama-format `config.json`, `generation_config.json` and bf16
    `model.safetensors`, made from the real weights in the GGUF file (SmolLM2-135M-Instruct: the same network,
    fine-tuned). The special-token ids are the base model's (bos = eos = 0, `<|endoftext|>`, the tokenizer's),
    not the Instruct's chat tokens that the GGUF metadata holds."""
    import torch

    from modeling_smollm2 import SmolLM2ForCausalLM
    from pretraining.serving import llama_model

    model = SmolLM2ForCausalLM.from_pretrained(gguf_folder, gguf_file=gguf_name, dtype=torch.float32)
    llama = llama_model(model, torch.bfloat16)
    for config in (llama.config, llama.generation_config):
        config.bos_token_id = config.eos_token_id = 0
        config.pad_token_id = None
    llama.config.rms_norm_eps = 1e-5  # the GGUF stores it as float32 (9.99999975e-06); the Hub config has 1e-05
    llama.save_pretrained(folder)
