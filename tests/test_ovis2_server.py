"""`mlx-aimv2 serve --model OVIS2_FOLDER`: POST /v1/chat/completions through OpenAI's own client, on a
real uvicorn server: the answer equals the library's (streamed and not), requests at once each get
their own, a client that leaves mid-stream costs the others nothing, every bad request is a 4xx
naming what is wrong, and the server's chat page works in a real headless browser."""

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import cli, served, tiny_ovis2_folder

pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
pytest.importorskip("starlette", reason="the server needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the official OpenAI client: pip install -e '.[test]'")


def _png(h: int, w: int, seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _ask(png: bytes, text: str = "Describe the image.") -> list:
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    return [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": text}]}
    ]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ovis2-server")
    (root / "src").mkdir()
    tiny_ovis2_folder(root / "src")
    r = cli("convert", root / "src", root / "mlx")
    assert r.exit_code == 0, r.output
    return root / "mlx"


@pytest.fixture(scope="module")
def client(folder):
    with served("--model", folder) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def bot(folder):
    from mlx_aimv2.vlm.chat import Ovis2Chat

    return Ovis2Chat(folder)


def _library_answer(bot, png: bytes, **how) -> dict:
    from PIL import Image

    return bot.generate("Describe the image.", [Image.open(io.BytesIO(png))], **how)


@pytest.mark.parametrize("shape", [(70, 70), (60, 150)])
def test_the_openai_client_gets_the_librarys_answer_streamed_and_not(client, bot, shape):
    png = _png(*shape, seed=shape[1])
    want = _library_answer(bot, png, max_tokens=16)
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, messages=_ask(png), max_tokens=16, temperature=0)
    assert r.choices[0].message.content == want["text"] and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == len(want["tokens"]) and r.usage.prompt_tokens > 16
    assert r.choices[0].finish_reason == ("length" if len(want["tokens"]) == 16 else "stop")
    chunks = list(client.chat.completions.create(messages=_ask(png), max_tokens=16, stream=True, model=model))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want["text"]
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason
    assert len(set(want["tokens"])) > 3  # a varied answer: the comparison can fail


def test_seeded_sampling_repeats_and_requests_at_once_each_get_their_own(client, bot):
    png_a, png_b = _png(70, 70, 1), _png(60, 150, 2)
    want = {k: _library_answer(bot, p, max_tokens=12)["text"] for k, p in (("a", png_a), ("b", png_b))}

    def ask(k):
        png = png_a if k == "a" else png_b
        r = client.chat.completions.create(model=client.models.list().data[0].id, messages=_ask(png), max_tokens=12)
        return k, r.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(ask, "abab"))
    assert all(text == want[k] for k, text in got) and want["a"] != want["b"]
    hot = [client.chat.completions.create(model=client.models.list().data[0].id, messages=_ask(png_a), max_tokens=12,
                                          temperature=1.5, seed=s).choices[0].message.content for s in (7, 7)]  # fmt: skip
    assert hot[0] == hot[1] == _library_answer(bot, png_a, max_tokens=12, temp=1.5, seed=7)["text"] != want["a"]


BAD = [
    ({"messages": []}, 400, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role system, user or assistant"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.jpg"}}]}]},
     400, "fetches no URL"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     400, "image"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "content[0] must be"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, "'temperature'"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "'max_tokens'"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "'stream'"),
    ({"messages": [{"role": "user", "content": "\ud800 hi"}]}, 400, "not valid Unicode"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}, 404, "not served here"),
]  # fmt: skip


@pytest.mark.parametrize("body,status,words", BAD, ids=range(len(BAD)))
def test_a_bad_chat_request_is_a_4xx_naming_what_is_wrong(client, body, status, words):
    import httpx

    r = httpx.post(str(client.base_url) + "chat/completions", content=_json(body), timeout=60,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == status and words in r.json()["error"]["message"], r.text


def test_too_many_images_and_embeddings_on_a_chat_server_are_refused(client):
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError, match="the limit is 8"):
        client.chat.completions.create(model=model, messages=_ask(_png(20, 20, 0)) * 9, max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="is a chat model"):
        client.embeddings.create(model=model, input="a cat")
    assert client.models.list().data[0].context_length > 0


def _json(body) -> bytes:
    import json

    return json.dumps(body).encode("utf-8", "surrogatepass")


def test_a_client_that_leaves_mid_stream_costs_the_others_nothing(client, bot):
    """A streamed answer whose client closes the connection after the first chunk: the server goes on
    answering everyone else (the abandoned answer's generator is dropped between two tokens)."""
    import httpx

    png = _png(60, 150, 5)
    body = {"messages": _ask(png), "max_tokens": 64, "stream": True, "temperature": 0}
    for _ in range(3):
        with httpx.stream("POST", str(client.base_url) + "chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first event, then the client is gone
    want = _library_answer(bot, png, max_tokens=12)["text"]
    model = client.models.list().data[0].id
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda _: client.chat.completions.create(model=model, messages=_ask(png), max_tokens=12),
                            range(3)))  # fmt: skip
    assert [g.choices[0].message.content for g in got] == [want] * 3


def test_the_chat_page_in_a_real_headless_browser(client, bot, tmp_path):
    """An Ovis2 server's page: pick an image, ask, and the streamed answer is the library's; a second
    question goes on the same conversation (its answer is the library's for the whole of it)."""
    from helpers import headless_browser
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    png = tmp_path / "wide.png"
    png.write_bytes(_png(60, 150, 11))
    root = str(client.base_url).removesuffix("/v1/")
    first = bot.generate("Describe the image.", [Image.open(png)], max_tokens=16)["text"]
    then = [{"role": "user", "content": [{"image": Image.open(png)}, "Describe the image."]},
            {"role": "assistant", "content": [first]}, {"role": "user", "content": ["And the colours?"]}]  # fmt: skip
    second = bot.tokenizer.decode(
        [p.token for p in bot.stream_prepared(*bot.prepare(then), 16)], skip_special_tokens=True
    )
    browser = headless_browser()
    try:
        browser.get(root + "/")
        max_tokens = browser.find_element(By.ID, "max")
        max_tokens.clear()
        max_tokens.send_keys("16")
        browser.find_element(By.ID, "image").send_keys(str(png))
        answers = lambda b: b.find_elements(By.CSS_SELECTOR, "#turns .assistant[data-done]")  # noqa: E731
        for question, want in (("Describe the image.", first), ("And the colours?", second)):
            done = len(answers(browser))
            browser.find_element(By.ID, "question").send_keys(question + "\n")
            WebDriverWait(browser, 90).until(lambda b, n=done: len(answers(b)) > n)
            assert answers(browser)[-1].text == want.strip() and not browser.find_element(By.ID, "status").text
        assert first != second and len(browser.find_elements(By.CSS_SELECTOR, "#turns img")) == 1
    finally:
        browser.quit()
