"""A local stand-in of the Hugging Face Hub HTTP API, for tests that cannot reach the real Hub.

It answers the routes `huggingface_hub` (HfApi.create_repo and upload_folder) calls, at the HTTP
level: repo creation, README YAML validation, pre-upload (every file as a regular, non-LFS file),
the recursive tree listing used for delete patterns, and the NDJSON commit, which it applies to
an in-memory copy of each repo. Point the client at it with HF_ENDPOINT=<url>.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)  # {"summary", "added", "deleted"}


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}  # (repo type, repo id) -> repo
        self.tokens: set[str] = set()  # bearer tokens the requests carried
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        return self.repos[(repo_type, repo_id)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _auth(self) -> None:
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    hub.tokens.add(auth.removeprefix("Bearer "))

            def _route(self) -> tuple[str, str, str, list[str]]:
                """/api/<type>s/<org>/<name>/<action>/... -> (type, repo id, action, rest); other
                routes (the client's own side requests) come back as an unknown repo."""
                parts = urlparse(self.path).path.strip("/").split("/")
                if len(parts) < 5:
                    return "", "", "", []
                return parts[1].removesuffix("s"), f"{parts[2]}/{parts[3]}", parts[4], parts[5:]

            def do_POST(self) -> None:
                self._auth()
                path = urlparse(self.path).path
                body = self._body()
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_type = req.get("type") or "model"
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    private = req.get("visibility", "private" if req.get("private") else "public") == "private"
                    hub.repos.setdefault((repo_type, repo_id), Repo(private=private))
                    prefix = "" if repo_type == "model" else f"{repo_type}s/"
                    return self._reply(200, {"url": f"{hub.url}/{prefix}{repo_id}"})
                if path == "/api/validate-yaml":
                    return self._reply(200, {})
                repo_type, repo_id, action, _ = self._route()
                repo = hub.repos.get((repo_type, repo_id))
                if repo is None:
                    return self._reply(404, {"error": "Repository not found"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if action == "commit":
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    commit = {"summary": "", "added": [], "deleted": []}
                    for line in lines:
                        key, value = line["key"], line["value"]
                        if key == "header":
                            commit["summary"] = value["summary"]
                        elif key == "file":
                            repo.files[value["path"]] = base64.b64decode(value["content"])
                            commit["added"].append(value["path"])
                        elif key in ("deletedFile", "deletedFolder"):
                            gone = [p for p in repo.files if p == value["path"] or p.startswith(value["path"] + "/")]
                            for p in gone:
                                del repo.files[p]
                            commit["deleted"] += gone
                        else:
                            return self._reply(400, {"error": f"stand-in does not handle '{key}'"})
                    repo.commits.append(commit)
                    oid = hashlib.sha1(json.dumps(commit).encode()).hexdigest()
                    prefix = "" if repo_type == "model" else f"{repo_type}s/"
                    return self._reply(200, {"commitUrl": f"{hub.url}/{prefix}{repo_id}/commit/{oid}",
                                             "commitOid": oid})
                return self._reply(404, {"error": f"stand-in has no route {path}"})

            def do_GET(self) -> None:
                self._auth()
                repo_type, repo_id, action, rest = self._route()
                repo = hub.repos.get((repo_type, repo_id))
                if repo is None:
                    return self._reply(404, {"error": "Repository not found"})
                if action == "tree":
                    under = "/".join(rest[1:])
                    entries = [{"type": "file", "path": p, "size": len(data),
                                "oid": hashlib.sha1(data).hexdigest()}
                               for p, data in sorted(repo.files.items()) if not under or fnmatch(p, f"{under}/*")]
                    return self._reply(200, entries)
                return self._reply(404, {"error": f"stand-in has no route {self.path}"})

        return Handler
