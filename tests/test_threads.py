"""Every public call from any thread and from several at once, with the serial results (issue 16):
MLX itself is not safe across threads, so the library runs its MLX work on one owner thread."""

import threading

import numpy as np
import pytest

import mlx_aimv2
from mlx_aimv2 import owner
from mlx_aimv2.errors import Cancelled

IMAGES = [np.random.default_rng(i).integers(0, 255, (60 + 4 * i, 80, 3), dtype=np.uint8) for i in range(6)]


def _in_threads(fn, n=4, calls=5):
    """fn(i) in n threads, `calls` times each; every result or exception, by (thread, call)."""
    out = {}

    def work(t):
        for c in range(calls):
            try:
                out[t, c] = fn(t)
            except Exception as e:  # recorded: the assertion shows which call failed and how
                out[t, c] = e

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


@pytest.fixture(scope="module")
def lit():
    return mlx_aimv2.load("demo-lit")


def test_four_threads_embedding_at_once_equal_the_serial_result(lit):
    serial = lit.embed(IMAGES, batch_size=4)
    out = _in_threads(lambda t: lit.embed(IMAGES, batch_size=4))
    assert len(out) == 20
    for key, got in out.items():
        assert not isinstance(got, Exception), f"{key}: {got!r}"
        np.testing.assert_array_equal(got, serial)


def test_text_images_and_labels_from_threads(lit):
    texts = ["a red circle", "a blue square", "two shapes"]
    ref_t, ref_i = lit.encode_text(texts), lit.encode_image(IMAGES[:2])
    ref_c = lit.classify(IMAGES[:2], ["red", "blue"])

    def mixed(t):
        if t % 3 == 0:
            return "t", lit.encode_text(texts)
        if t % 3 == 1:
            return "i", lit.encode_image(IMAGES[:2])
        return "c", lit.classify(IMAGES[:2], ["red", "blue"])

    for key, got in _in_threads(mixed, n=6, calls=3).items():
        assert not isinstance(got, Exception), f"{key}: {got!r}"
        kind, value = got
        np.testing.assert_array_equal(value, {"t": ref_t, "i": ref_i, "c": ref_c}[kind])


def test_a_model_loaded_in_one_thread_is_used_in_another():
    box = {}
    t = threading.Thread(target=lambda: box.update(model=mlx_aimv2.load("demo")))
    t.start()
    t.join()
    worker = {}
    t = threading.Thread(target=lambda: worker.update(e=box["model"].embed(IMAGES[:3])))
    t.start()
    t.join()
    np.testing.assert_array_equal(worker["e"], box["model"].embed(IMAGES[:3]))


def test_gui_pattern_main_loads_worker_embeds_with_progress_and_cancel():
    """An app: the main thread loads; a worker embeds with a progress callback; the UI cancels."""
    model = mlx_aimv2.load("demo")
    seen, result = [], {}

    def worker():
        result["e"] = model.embed(IMAGES, batch_size=2, progress=lambda done, total: seen.append((done, total)))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [(2, 6), (4, 6), (6, 6)]
    np.testing.assert_array_equal(result["e"], model.embed(IMAGES, batch_size=2))

    stop = threading.Event()

    def stop_after_first(done, total):
        stop.set()

    with pytest.raises(Cancelled):
        model.embed(IMAGES, batch_size=2, progress=stop_after_first, cancel=stop)


def test_index_add_and_search_from_threads(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, a in enumerate(IMAGES):
        Image.fromarray(a).save(photos / f"{i}.png")
    lib = mlx_aimv2.Index(tmp_path / "lib.aimv2", model="demo-lit")
    errors = []
    t = threading.Thread(target=lambda: errors.append(lib.add([photos]).new))
    t.start()
    t.join()
    assert errors == [6]
    serial = lib.search(text="a red circle", k=3)
    for key, hits in _in_threads(lambda t: lib.search(text="a red circle", k=3)).items():
        assert not isinstance(hits, Exception), f"{key}: {hits!r}"
        assert hits == serial
    lib.close()


def test_cancel_leaves_the_index_consistent(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, a in enumerate(IMAGES):
        Image.fromarray(a).save(photos / f"{i}.png")
    stop = threading.Event()
    with mlx_aimv2.Index(tmp_path / "lib.aimv2", model="demo") as lib:
        with pytest.raises(Cancelled):
            lib.add([photos], batch_size=2, progress=lambda done, total: done >= 2 and stop.set(), cancel=stop)
        kept = len(lib)
        assert 0 < kept < 6 and kept % 2 == 0  # whole batches only
        s = lib.add([photos], batch_size=2)  # the next run finishes the job
        assert (s.unchanged, s.new, s.total) == (kept, 6 - kept, 6)


def test_owner_runs_nested_calls_directly():
    assert owner.run(lambda: owner.run(lambda: owner.on_owner()))
    assert not owner.on_owner()
