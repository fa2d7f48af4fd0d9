"""Push: exercised against a local HTTP server that implements the few Hub endpoints huggingface_hub calls for
`create_repo` + `create_branch` + `upload_folder` (validate-yaml, preupload, commit) and records every request.

The fake server answers "regular" to the preupload call for every file, so the client sends each file base64-encoded
inside the commit's NDJSON body (the regular-file path) and never needs LFS or xet storage, which a test cannot fake.
"""

import base64
import importlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import _upload_pipeline, constants
from huggingface_hub.errors import LocalTokenNotFoundError

from tga_hf import cli
from tga_hf.hub import export_index, push, upload_files

from .hub_testing import REPO_ID, TEXTS, StandInRetriever, export_tiny


class FakeHub:
    """Records requests; stores the files of every commit by (repo, revision)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.commits: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(
                    {"path": self.path, "authorization": self.headers.get("Authorization"), "body": body}
                )
                status, payload = hub.answer(self.path.split("?")[0], body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST

        return Handler

    def answer(self, path: str, body: bytes) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            request = json.loads(body)
            return 200, {"url": f"{self.url}/{request['organization']}/{request['name']}"}
        if path == "/api/validate-yaml":
            return 200, {}
        if len(parts) == 6 and parts[0] == "api" and parts[1] in ("models", "datasets") and parts[4] == "branch":
            return 200, {}
        if len(parts) == 6 and parts[0] == "api" and parts[1] in ("models", "datasets") and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if len(parts) == 6 and parts[0] == "api" and parts[1] in ("models", "datasets") and parts[4] == "commit":
            lines = [json.loads(line) for line in body.decode().splitlines() if line]
            files = {
                line["value"]["path"]: base64.b64decode(line["value"]["content"])
                for line in lines
                if line["key"] == "file"
            }
            other = [line["key"] for line in lines if line["key"] not in ("header", "file")]
            repo = "/".join(parts[2:4])
            self.commits.append({"kind": parts[1], "repo": repo, "revision": parts[5], "files": files, "other": other})
            oid = f"{len(self.commits):040x}"
            return 200, {"commitUrl": f"{self.url}/{parts[2]}/{parts[3]}/commit/{oid}", "commitOid": oid}
        return 404, {"error": f"fake hub: no route for {path}"}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("push") / "tiny-tga")


@pytest.fixture
def online(monkeypatch):
    """The tests run with HF_HUB_OFFLINE=1; the fake Hub on 127.0.0.1 is the only thing contacted."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_test_token")


@pytest.mark.parametrize("xet_installed", [True, False], ids=["pipelined-upload", "single-commit"])
def test_push_uploads_every_exported_file(folder, online, monkeypatch, xet_installed):
    """Both upload paths of huggingface_hub: the streamed pipeline (hf_xet installed) and the single create_commit."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", not xet_installed)
    pipeline_calls = []
    pipelined_upload = _upload_pipeline.pipelined_upload

    def spy(*args, **kwargs):
        pipeline_calls.append(1)
        return pipelined_upload(*args, **kwargs)

    monkeypatch.setattr(_upload_pipeline, "pipelined_upload", spy)
    # huggingface_hub 1.x binds the name in hf_api at import time, 2.x imports it at call time: spy on both
    hf_api_module = importlib.import_module("huggingface_hub.hf_api")
    if hasattr(hf_api_module, "pipelined_upload"):
        monkeypatch.setattr(hf_api_module, "pipelined_upload", spy)
    on_disk = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert upload_files(folder) == sorted(on_disk)

    with FakeHub() as hub:
        result = push(folder, REPO_ID, private=True, revision="v1", endpoint=hub.url)

    paths = [request["path"] for request in hub.requests]
    assert paths[0] == "/api/repos/create"
    assert json.loads(hub.requests[0]["body"]) == {
        "name": "tiny-tga",
        "organization": "tga-org",
        "type": "model",
        "visibility": "private",
    }
    assert f"/api/models/{REPO_ID}/branch/v1" in paths
    assert any(path.startswith(f"/api/models/{REPO_ID}/preupload/v1") for path in paths)
    assert all(request["authorization"] == "Bearer hf_fake_test_token" for request in hub.requests)

    uploaded = {}
    for commit in hub.commits:
        assert (commit["repo"], commit["revision"], commit["other"]) == (REPO_ID, "v1", [])
        uploaded.update(commit["files"])
    assert uploaded == on_disk  # every file, byte for byte, shards, remote code, retrieval/ and .eval_results/ included
    assert result.files == sorted(on_disk)
    assert len(pipeline_calls) == int(xet_installed)
    assert result.commit_url.startswith(f"{hub.url}/{REPO_ID}/commit/")


def test_push_to_main_creates_no_branch(folder, online):
    with FakeHub() as hub:
        push(folder, REPO_ID, endpoint=hub.url)
    assert not any("/branch/" in request["path"] for request in hub.requests)
    assert {commit["revision"] for commit in hub.commits} == {"main"}


def test_dry_run_lists_the_files_and_contacts_nothing(folder, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert cli.main(["push", str(folder), REPO_ID, "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"would upload {len(upload_files(folder))} files from {folder} to {REPO_ID}:"
    assert [line.strip() for line in printed[1:]] == upload_files(folder)


def test_missing_token_is_a_clear_error(folder, online, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(LocalTokenNotFoundError, match="set HF_TOKEN, run `hf auth login`"):
        push(folder, REPO_ID, endpoint="http://127.0.0.1:9")


def test_offline_mode_and_missing_folder_are_refused(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        push(folder, REPO_ID)
    with pytest.raises(FileNotFoundError, match="export the model first"):
        push(tmp_path / "missing", REPO_ID)
    (tmp_path / "not-exported").mkdir()
    with pytest.raises(FileNotFoundError, match="no README.md"):
        push(tmp_path / "not-exported", REPO_ID)


def test_push_an_index_as_a_dataset_repository(tmp_path, online):
    folder = export_index(StandInRetriever(TEXTS), tmp_path / "index", repo_id="tga-org/index")
    with FakeHub() as hub:
        push(folder, "tga-org/index", repo_type="dataset", endpoint=hub.url)
    assert json.loads(hub.requests[0]["body"])["type"] == "dataset"
    assert {commit["kind"] for commit in hub.commits} == {"datasets"}
    uploaded = {path: data for commit in hub.commits for path, data in commit["files"].items()}
    assert uploaded == {path.name: path.read_bytes() for path in folder.iterdir()}
