"""`mlx-aimv2 serve` (issue 19): the embeddings API equals the Python API, search equals the Index,
every bad request is a 4xx with one line of JSON, a real uvicorn process serves 32 concurrent
clients without an error, and the page works in a real headless Chromium."""

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mlx_aimv2

pytest.importorskip("starlette", reason="the server needs the serve extra: pip install -e '.[serve]'")
from helpers import PHOTO, ROOT, headless_browser
from starlette.testclient import TestClient  # noqa: E402

from mlx_aimv2.serve import build_app, open_settings  # noqa: E402

TOKEN = "a-long-enough-test-token-123"


def data_uri(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    photos = root / "photos"
    shutil.copytree(ROOT / "examples" / "scenes", photos)
    shutil.copy(PHOTO, photos / "grace.jpg")
    db = root / "lib.aimv2"
    with mlx_aimv2.Index(db, model="demo-lit") as lib:
        lib.add([photos])
    return db, photos


@pytest.fixture(scope="module")
def client(library):
    db, photos = library
    with TestClient(build_app(open_settings(db=db, allow=[photos]))) as c:
        yield c


@pytest.fixture(scope="module")
def lit():
    return mlx_aimv2.load("demo-lit")


def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    m = client.get("/v1/models").json()["data"][0]
    assert m["object"] == "model" and m["embedding_dim"] == 128 and m["modalities"] == ["text", "image"]


def test_embeddings_equal_the_python_api(client, lit):
    r = client.post("/v1/embeddings", json={"input": ["a red circle", "two blue squares"]})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([d["embedding"] for d in body["data"]], np.float32)
    np.testing.assert_allclose(got, lit.encode_text(["a red circle", "two blue squares"]), atol=1e-5)
    assert [d["index"] for d in body["data"]] == [0, 1] and body["object"] == "list"
    mixed = client.post("/v1/embeddings", json={"input": ["a red circle", data_uri(PHOTO)]})
    assert mixed.status_code == 200, mixed.text
    mixed = mixed.json()["data"]
    np.testing.assert_allclose(mixed[1]["embedding"], lit.encode_image([PHOTO])[0], atol=1e-5)
    np.testing.assert_allclose(mixed[0]["embedding"], got[0], atol=1e-5)
    bare = base64.b64encode(PHOTO.read_bytes()).decode()
    b64 = client.post("/v1/embeddings", json={"input": bare, "modality": "image", "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(vec, lit.encode_image([PHOTO])[0], atol=1e-5)


def test_search_equals_the_index(client, library):
    db, photos = library
    with mlx_aimv2.Index(db) as lib:
        want = lib.search(text="a large orange circle in the center", k=5)
        like = lib.similar(str(photos / "grace.jpg"), k=3)
    r = client.post("/v1/search", json={"text": "a large orange circle in the center", "k": 5}).json()["results"]
    assert [h["path"] for h in r] == [h.path for h in want]
    q = client.post("/v1/search", json={"query": "a large orange circle in the center", "k": 5}).json()["results"]
    assert [h["path"] for h in q] == [h.path for h in want]
    first = client.post("/v1/search", json={"image": data_uri(photos / "grace.jpg"), "k": 1}).json()["results"][0]
    assert first["path"].endswith("grace.jpg") and first["score"] > 0.999
    more = client.post("/v1/search", json={"like": first["id"], "k": 3}).json()["results"]
    assert [h["path"] for h in more] == [h.path for h in like]
    terms = [{"text": "a red circle", "weight": 2}, {"image": data_uri(PHOTO), "weight": -1}]
    assert len(client.post("/v1/search", json={"query": terms, "k": 4}).json()["results"]) == 4
    thumb = client.get(f"/thumbs/{first['id']}.jpg")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= 256
    assert isinstance(client.get("/v1/dupes").json()["groups"], list)


def _png_claiming(w: int, h: int) -> str:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def test_bad_requests_are_one_line_4xx(client, library, tmp_path):
    db, photos = library
    outside = tmp_path / "secret.jpg"
    shutil.copy(PHOTO, outside)
    (photos / "escape.jpg").symlink_to(outside)
    cases = [
        ("post", "/v1/embeddings", b"{not json", 400),
        ("post", "/v1/embeddings", {"input": 5}, 400),
        ("post", "/v1/embeddings", {"input": []}, 400),
        ("post", "/v1/embeddings", {"nothing": 1}, 400),
        ("post", "/v1/embeddings", {"input": ["a", 3]}, 400),
        ("post", "/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400),
        ("post", "/v1/embeddings", {"input": "x", "model": "gpt-4"}, 404),
        ("post", "/v1/embeddings", {"input": "data:image/png;base64,@@@@", "modality": "image"}, 400),
        ("post", "/v1/embeddings", {"input": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}, 400),
        ("post", "/v1/embeddings", {"input": _png_claiming(20000, 20000)}, 413),
        ("post", "/v1/embeddings", {"input": _png_claiming(20000, 1)}, 400),
        ("post", "/v1/embeddings", {"input": str(photos / "../../../etc/passwd"), "modality": "image"}, 404),
        ("post", "/v1/embeddings", {"input": "/etc/hostname", "modality": "image"}, 403),
        ("post", "/v1/embeddings", {"input": str(photos / "escape.jpg"), "modality": "image"}, 403),
        ("post", "/v1/embeddings", b"[" + b"1," * (17 << 20) + b"1]", 413),
        ("post", "/v1/search", {"text": "x", "k": 0}, 400),
        ("post", "/v1/search", {"text": "x", "k": "5"}, 400),
        ("post", "/v1/search", {"text": "x", "image": "y"}, 400),
        ("post", "/v1/search", {"like": "0000"}, 404),
        ("post", "/v1/search", {"query": "a +"}, 400),
        ("post", "/v1/search", {"query": [{"text": "a", "weight": "x"}]}, 400),
        ("get", "/thumbs/deadbeef.jpg", None, 404),
        ("get", "/thumbs/..%2F..%2Fetc%2Fpasswd.jpg", None, 404),
        ("get", "/v1/dupes?threshold=abc", None, 400),
        ("get", "/v1/embeddings", None, 405),
        ("get", "/nowhere", None, 404),
        ("post", "/v1/embeddings", b"[" * 200_000 + b"]" * 200_000, 400),  # nested past the parser's depth
        ("post", "/v1/embeddings", b'{"input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", 400),
    ]
    for method, path, payload, status in cases:
        if method == "get":
            r = client.get(path)
        elif isinstance(payload, bytes):
            r = client.post(path, content=payload, headers={"content-type": "application/json"})
        else:
            r = client.post(path, json=payload)
        assert r.status_code == status, (path, payload if not isinstance(payload, bytes) else payload[:40], r.text)
        message = r.json()["error"]["message"]
        assert message and "\n" not in message and "Traceback" not in message


def test_a_token_guards_every_route(library):
    db, _ = library
    with TestClient(build_app(open_settings(db=db, token=TOKEN))) as c:
        for path in ("/health", "/v1/models", "/", "/v1/dupes"):
            assert c.get(path).status_code == 401
        assert c.get("/health", headers={"Authorization": "Bearer wrong-token-of-some-length"}).status_code == 401
        assert c.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        page = c.get(f"/?token={TOKEN}")  # the page: a link with the token sets a cookie for its own calls
        assert page.status_code == 200 and "mlx_aimv2_token" in page.headers.get("set-cookie", "")
        assert c.get("/v1/models").status_code == 200  # the cookie now


def test_cors_only_for_the_origins_given(library):
    db, _ = library
    pre = {"Origin": "http://app.local", "Access-Control-Request-Method": "POST"}
    with TestClient(build_app(open_settings(db=db))) as c:
        assert "access-control-allow-origin" not in c.options("/v1/embeddings", headers=pre).headers
    with TestClient(build_app(open_settings(db=db, token=TOKEN, cors=["http://app.local"]))) as c:
        r = c.options("/v1/embeddings", headers=pre)  # a preflight carries no token
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.local"
        assert c.post("/v1/embeddings", json={"input": "x"}, headers={"Origin": "http://app.local"}).status_code == 401


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(library):
    """A real `mlx-aimv2 serve` process on localhost."""
    db, _ = library
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_aimv2", "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    import httpx

    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the server did not start: " + proc.stderr.read()[-2000:])
    yield url, proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()


def test_a_real_server_answers_32_concurrent_clients(server, lit):
    import httpx

    url, _ = server
    images = [data_uri(p) for p in sorted((ROOT / "examples" / "scenes" / "images").glob("*.jpg"))[:8]]

    def client(i):
        with httpx.Client(timeout=120) as c:
            out = []
            for j in range(3):
                r = c.post(url + "/v1/embeddings", json={"input": images[(i + j) % len(images)]})
                out.append((r.status_code, r.json()["data"][0]["embedding"] if r.status_code == 200 else r.text))
            return out

    before = httpx.get(url + "/health").json()["batches"]
    with ThreadPoolExecutor(32) as pool:
        results = [x for xs in pool.map(client, range(32)) for x in xs]
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    after = httpx.get(url + "/health").json()["batches"]
    calls, inputs = after["model_calls"] - before["model_calls"], after["inputs"] - before["inputs"]
    assert inputs == 96 and calls < inputs / 2, (calls, inputs)  # single-image requests ran as batches
    ref = lit.encode_image([Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))])[0]
    first = [emb for (code, emb), k in zip(results, range(len(results))) if k % 3 == 0 and (k // 3) % 8 == 0]
    for emb in first:
        np.testing.assert_allclose(emb, ref, atol=1e-4)


def test_serve_refuses_a_public_address_without_a_token():
    r = subprocess.run(
        [sys.executable, "-m", "mlx_aimv2", "serve", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "--token" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr


def test_the_page_in_a_real_headless_browser(server, library, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    want = httpx.post(url + "/v1/search", json={"query": "a large orange circle in the center", "k": 24}).json()
    browser = headless_browser()
    try:
        browser.get(url + "/")
        box = browser.find_element(By.ID, "q")
        box.send_keys("a large orange circle in the center\n")
        WebDriverWait(browser, 60).until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#grid figure")))
        figures = browser.find_elements(By.CSS_SELECTOR, "#grid figure")
        assert len(figures) == len(want["results"])
        assert figures[0].get_attribute("data-path") == want["results"][0]["path"]
        WebDriverWait(browser, 30).until(
            lambda b: b.execute_script(
                "return [...document.querySelectorAll('#grid img')].slice(0, 4).every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 10_000
        figures[0].click()  # more like this
        WebDriverWait(browser, 30).until(lambda b: "more like" in b.find_element(By.ID, "status").text)
        assert (
            browser.find_elements(By.CSS_SELECTOR, "#grid figure")[0].get_attribute("data-path")
            == want["results"][0]["path"]
        )
        if os.environ.get("MLX_AIMV2_SCREENSHOT"):  # docs/serve.png: MLX_AIMV2_SCREENSHOT=docs/serve.png pytest -k page
            browser.get(url + "/")
            browser.find_element(By.ID, "q").send_keys("a large orange circle in the center\n")
            WebDriverWait(browser, 60).until(EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#grid figure")))
            time.sleep(1.0)
            browser.save_screenshot(os.environ["MLX_AIMV2_SCREENSHOT"])
    finally:
        browser.quit()
    json.dumps(want)  # the API's answer is plain JSON


def test_the_index_at_fault_is_a_5xx_or_409_not_a_4xx(library, monkeypatch):
    """A damaged index is the server's fault (500) and an index whose model changed a conflict (409):
    the request did nothing wrong, so neither is a 400."""
    from mlx_aimv2.index.faults import IndexFault, ModelChanged

    db, photos = library
    settings = open_settings(db=db, allow=[photos])
    with TestClient(build_app(settings)) as c:
        for fault, status in (
            (IndexFault("lib.aimv2: the index is damaged"), 500),
            (ModelChanged("built with x"), 409),
        ):

            def failing(*a, fault=fault, **k):
                raise fault

            monkeypatch.setattr(settings.index, "search", failing)
            r = c.post("/v1/search", json={"text": "a red circle"})
            assert r.status_code == status and str(fault) in r.json()["error"]["message"], r.text
