"""Sharing as the ecosystem does (issue 29): every folder convert / export write has a model card that
huggingface_hub's ModelCard reads (library_name mlx, a quantized folder's measured fidelity), weights
over --max-shard-size are shards with an index that every reader (ours, transformers) takes, and
--upload-repo pushes the folder with the real huggingface_hub client to a local server that answers
the hub's upload endpoints."""

import base64
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import PHOTO, cli, one_clear_line

import mlx_aimv2
from mlx_aimv2 import hub, kinds, modelcard


def test_a_quantized_folder_has_a_card_the_hub_reads_with_its_measured_fidelity(tmp_path):
    from huggingface_hub import ModelCard

    from mlx_aimv2.checkpoints.export import sample_pixels

    out = tmp_path / "q8"
    r = cli("convert", "demo", out, "-q")
    assert r.exit_code == 0, r.output
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "mlx" and card.data.pipeline_tag == "image-feature-extraction"
    assert "8-bit" in card.data.tags and "mlx-aimv2 convert demo" in card.text
    reported = float(card.text.split("min ")[1].split(".\n")[0].rstrip("."))
    # the same measure, recomputed here from the two folders
    pixels = sample_pixels(mlx_aimv2.load("demo").config, hub.BUNDLED["demo"])
    a = mlx_aimv2.load("demo").embed(list(pixels.astype(np.float32)))
    b = mlx_aimv2.load(str(out), keep_quantized=True).embed(list(pixels.astype(np.float32)))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert 0.9 < reported <= 1.0 and abs(cos.min() - reported) < 2e-3, (cos.min(), reported)


def test_every_kind_of_folder_has_a_card(tmp_path):
    from huggingface_hub import ModelCard

    lit = mlx_aimv2.convert("demo-lit", tmp_path / "lit")
    assert ModelCard.load(lit / "README.md").data.pipeline_tag == "zero-shot-image-classification"
    assert cli("export", "demo", tmp_path / "hf", "--format", "transformers").exit_code == 0
    assert ModelCard.load(tmp_path / "hf" / "README.md").data.library_name == "transformers"
    from mlx_aimv2.config import ModelConfig, VisionConfig

    text = modelcard.render(ModelConfig(vision=VisionConfig()), kinds.ENCODER, "apple/aimv2-large-patch14-224")
    (tmp_path / "card.md").write_text(text)
    assert ModelCard.load(tmp_path / "card.md").data.base_model == "apple/aimv2-large-patch14-224"
    assert hub.repo_of("aimv2-large-patch14-224") == "apple/aimv2-large-patch14-224" and hub.repo_of("demo") is None


def test_a_card_keeps_its_provenance_through_convert_quantize_and_export(tmp_path):
    """export --format transformers of a quantized folder wrote base_model none, license other and the
    tags 8-bit / quantized over float32 weights: every card says what its folder holds and where it came
    from, the licence fields kept as mlx-lm keeps them."""
    from huggingface_hub import ModelCard

    apple = tmp_path / "apple-l"  # a folder as `convert apple/aimv2-large-patch14-224` writes it
    mlx_aimv2.convert("demo", apple)
    text = (apple / "README.md").read_text().split("---", 2)[2]
    front = {"library_name": "mlx", "base_model": "apple/aimv2-large-patch14-224", "license": "other",
             "license_name": "apple-amlr", "license_link": "LICENSE"}  # fmt: skip
    (apple / "README.md").write_text(
        "---\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in front.items()) + "---" + text
    )
    assert cli("convert", apple, tmp_path / "q8", "-q").exit_code == 0
    assert cli("export", tmp_path / "q8", tmp_path / "hf", "--format", "transformers").exit_code == 0
    q8, hf = (ModelCard.load(tmp_path / d / "README.md").data for d in ("q8", "hf"))
    for card in (q8, hf):
        assert card.base_model == "apple/aimv2-large-patch14-224"
        assert (card.license, card.license_name, card.license_link) == ("other", "apple-amlr", "LICENSE")
    assert {"8-bit", "quantized", "mlx"} <= set(q8.tags) and q8.library_name == "mlx"
    assert not {"8-bit", "quantized", "mlx"} & set(hf.tags) and hf.library_name == "transformers"
    body = (tmp_path / "hf" / "README.md").read_text()
    assert "8-bit" not in body and "MLX](https" not in body and "transformers (PyTorch) format" in body
    assert ModelCard.load(hub.BUNDLED["demo"] / "README.md").data.license == "mit"  # the bundled demo's own card


def test_weights_over_the_shard_size_are_shards_every_reader_takes(tmp_path):
    r = cli("convert", "demo", tmp_path / "sharded", "--max-shard-size", "2MB")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "sharded"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 5 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    # mlx-lm's conventions: the map sorted by name, the parameters counted beside the bytes
    every = {k: v for s in shards for k, v in mx.load(str(folder / s)).items()}
    assert list(index["weight_map"]) == sorted(every)
    assert index["metadata"] == {"total_size": sum(v.nbytes for v in every.values()),
                                 "total_parameters": sum(v.size for v in every.values())}  # fmt: skip
    assert not (folder / "model.safetensors").exists()
    assert all((folder / s).stat().st_size <= 2_000_000 or len(mx.load(str(folder / s))) == 1 for s in shards)
    np.testing.assert_allclose(mlx_aimv2.load(str(folder)).embed(PHOTO), mlx_aimv2.load("demo").embed(PHOTO), atol=1e-6)
    # the same folder converted again as one file: the shards of before are gone, not read first
    assert cli("convert", "demo", folder, "--overwrite").exit_code == 0
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("model-0*"))


def test_transformers_loads_a_sharded_export(tmp_path):
    import torch
    from helpers import hf_vision, torch_pixels
    from transformers import Aimv2VisionModel

    model, folder = hf_vision(tmp_path)
    r = cli("export", folder, tmp_path / "out", "--format", "transformers", "--max-shard-size", "300KB")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    back = Aimv2VisionModel.from_pretrained(tmp_path / "out").eval()
    x = np.random.default_rng(0).normal(size=(1, 56, 56, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch_pixels(x)).last_hidden_state.numpy(),
                                   model(torch_pixels(x)).last_hidden_state.numpy(), atol=1e-5)  # fmt: skip


def test_bad_sharing_flags_are_one_line_before_any_work(tmp_path):
    one_clear_line(cli("convert", "demo", tmp_path / "a", "--max-shard-size", "big"), "--max-shard-size")
    one_clear_line(cli("convert", "demo", tmp_path / "b", "--upload-repo", "no-owner"), "OWNER/NAME")
    one_clear_line(cli("export", "demo", tmp_path / "c", "--max-shard-size", "0"), "above zero")
    assert not any((tmp_path / n).exists() for n in "abc")


# -- the hub's upload endpoints, answered locally ------------------------------------------------------


class FakeHubUploads(BaseHTTPRequestHandler):
    """What huggingface_hub's create_repo and upload_folder ask, answered as the hub does, every file
    taken inline (the "regular" upload mode); `received` records what arrived."""

    received: dict = {}
    refuse: int = 0

    def _answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.setdefault("paths", []).append(("POST", self.path))
        if self.refuse:
            return self._answer(self.refuse, {"error": "Invalid credentials"})
        if self.path.startswith("/api/repos/create"):
            name = json.loads(body)
            self.received["repo"] = name
            host = f"http://127.0.0.1:{self.server.server_port}"
            return self._answer(200, {"url": f"{host}/{name.get('organization')}/{name.get('name')}"})
        if self.path.startswith("/api/validate-yaml"):
            return self._answer(200, {"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._answer(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                for f in files]})  # fmt: skip
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    self.received.setdefault("files", {})[op["value"]["path"]] = base64.b64decode(
                        op["value"]["content"]
                    )
            host = f"http://127.0.0.1:{self.server.server_port}"
            return self._answer(200, {"commitUrl": f"{host}/someone/x/commit/{'a' * 40}", "commitOid": "a" * 40})
        self._answer(404, {"error": "no route"})

    def do_GET(self):
        self.received.setdefault("paths", []).append(("GET", self.path))
        self._answer(404, {"error": "no route"})

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHubUploads.received, FakeHubUploads.refuse = {}, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHubUploads)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_for_the_local_server")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    yield FakeHubUploads
    server.shutdown()


def test_upload_pushes_every_file_of_the_folder(fake_hub, tmp_path):
    r = cli("convert", "demo-lit", tmp_path / "lit", "--upload-repo", "someone/aimv2-demo-lit", "--private")
    assert r.exit_code == 0, (r.output, fake_hub.received.get("paths"))
    arrived = fake_hub.received["files"]
    local = {p.name: p.read_bytes() for p in (tmp_path / "lit").iterdir()}
    assert set(arrived) == set(local) and all(arrived[k] == local[k] for k in local)
    assert fake_hub.received["repo"].get("private", fake_hub.received["repo"].get("visibility") == "private") is True, (
        fake_hub.received["repo"]
    )
    assert "README.md" in arrived and "uploaded" in r.output


def test_a_refused_or_offline_upload_is_one_line_and_keeps_the_folder(fake_hub, tmp_path, monkeypatch):
    fake_hub.refuse = 401
    last = one_clear_line(cli("convert", "demo", tmp_path / "a", "--upload-repo", "someone/x"), "refused", "hf upload")
    assert (tmp_path / "a" / "model.safetensors").is_file() and str(tmp_path / "a") in last
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    one_clear_line(cli("convert", "demo", tmp_path / "b", "--upload-repo", "someone/x"), "HF_HUB_OFFLINE")
    assert (tmp_path / "b" / "README.md").is_file()
    assert Path(tmp_path / "b").is_dir()


def _hub_at(monkeypatch, url: str) -> None:
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_for_the_local_server")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def test_an_upload_to_a_closed_port_or_an_unknown_host_is_one_line_and_keeps_the_folder(tmp_path, monkeypatch):
    """It printed a 106-line traceback ending in httpx's ConnectError (not an OSError)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for i, url in enumerate([f"http://127.0.0.1:{closed}", "http://no-such-host.invalid"]):
        _hub_at(monkeypatch, url)
        out = tmp_path / f"q{i}"
        last = one_clear_line(cli("convert", "demo", out, "-q", "--upload-repo", "me/x"), "cannot reach", "hf upload")
        assert str(out) in last and (out / "model.safetensors").is_file()


def test_an_upload_to_a_hub_that_never_answers_waits_a_bounded_time(tmp_path, monkeypatch):
    """A hub that accepts the connection and never answers held it for more than 300 s."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing is ever read or answered
    try:
        _hub_at(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("MLX_AIMV2_HUB_TIMEOUT", "1")
        last = one_clear_line(cli("convert", "demo", tmp_path / "a", "--upload-repo", "me/x"), "within 1 s")
        assert "MLX_AIMV2_HUB_TIMEOUT" in last and (tmp_path / "a" / "README.md").is_file()
        monkeypatch.setenv("MLX_AIMV2_HUB_TIMEOUT", "soon")
        one_clear_line(cli("convert", "demo", tmp_path / "b", "--upload-repo", "me/x"), "MLX_AIMV2_HUB_TIMEOUT")
    finally:
        silent.close()


@pytest.mark.parametrize("repo", ["owner/na me", "../etc", "owner/..", "owner/" + "n" * 300, "owner/name?x=1"])
def test_an_invalid_repo_id_is_refused_before_any_work(tmp_path, repo):
    one_clear_line(cli("convert", "demo", tmp_path / "out", "--upload-repo", repo), "--upload-repo", "OWNER/NAME")
    one_clear_line(cli("export", "demo", tmp_path / "out", "--upload-repo", repo), "--upload-repo", "OWNER/NAME")
    assert not (tmp_path / "out").exists()  # refused before the conversion ran


def test_serve_without_its_extra_is_one_line_with_the_install():
    """It ended in ModuleNotFoundError: No module named 'starlette'."""
    code = "import sys; sys.modules['starlette'] = None; from mlx_aimv2.cli import console; console()"
    p = subprocess.run([sys.executable, "-c", code, "serve"], capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "pip install 'mlx-aimv2[serve]'" in lines[0], p.stderr[-1500:]
