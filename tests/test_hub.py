"""hub.download says what went wrong, one cause per message: a bad repo id, a repo or revision the
hub does not have, a gated repo, no network with nothing cached, a snapshot without weights. The
hub is a local HTTP server answering as huggingface.co does (its X-Error-Code header), so the real
huggingface_hub client maps the answers."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlx_aimv2 import hub
from mlx_aimv2.errors import UserError

ANSWERS = {  # repo -> (status, X-Error-Code) for its metadata request
    "apple/missing": (404, "RepoNotFound"),
    "apple/gated": (403, "GatedRepo"),
    "apple/norev": (404, "RevisionNotFound"),
    "apple/refused": (403, None),
}


class FakeHub(BaseHTTPRequestHandler):
    def do_GET(self):
        for repo, (status, code) in ANSWERS.items():
            if f"/{repo}/" in self.path or self.path.endswith(f"/{repo}"):
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                body = json.dumps({"error": code or "forbidden"}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_REACHABLE", {})  # ask the fake hub, not an earlier test's answer
    yield server
    server.shutdown()


def _error(name, revision=None) -> str:
    with pytest.raises(UserError) as e:
        hub.download(name, revision)
    return str(e.value)


def test_each_cause_has_its_own_message(fake_hub):
    msgs = {
        "missing": _error("apple/missing", "main"),
        "gated": _error("apple/gated", "main"),
        "norev": _error("apple/norev", "v9"),
        "refused": _error("apple/refused", "main"),
    }
    assert "no such repository" in msgs["missing"]
    assert "gated" in msgs["gated"] and "log in" in msgs["gated"]
    assert "no revision 'v9'" in msgs["norev"]
    assert "refused access (403)" in msgs["refused"]
    assert len(set(msgs.values())) == len(msgs)
    assert not any("cannot be reached" in m for m in msgs.values())  # the old catch-all


def test_a_bad_repo_id_is_named():
    assert "is not a valid hub id" in _error("apple/bad name!")


def test_offline_with_nothing_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    msg = _error("apple/aimv2-large-patch14-224")
    assert "not in the local Hugging Face cache" in msg and "ac764a25" in msg


def test_a_cached_snapshot_without_weights(monkeypatch, tmp_path):
    """The cache holds the pinned revision but no model.safetensors: say so, not 'no weights' later."""
    rev = hub.REVISIONS["aimv2-large-patch14-224"]
    snap = tmp_path / "cache" / "models--apple--aimv2-large-patch14-224" / "snapshots" / rev
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    msg = _error("apple/aimv2-large-patch14-224")
    assert "holds no model.safetensors" in msg
    (snap / "model.safetensors").write_bytes(b"")
    assert hub.download("apple/aimv2-large-patch14-224") == snap
