"""Ovis2 (issue 39): the visual tokenizer on this package's AIMv2 encoder, the whole model, its
preprocessing and prompt, `convert` (float and -q) and `chat`, each against transformers' Ovis2
with random weights on tiny configs (no download). The weights are drawn at a scale where attention
is far from uniform, so RoPE's and the heads' settings change the answer. A grid the hidden stride
does not divide is zero-padded first (transformers' own padding fails on one: it pads the token
axis, not the grid), checked against numpy."""

import numpy as np
import pytest
from helpers import randomize, tiny_ovis2_config, tiny_ovis2_folder, torch_pixels

import mlx_aimv2  # noqa: F401  (the package's CPU set-up)
from mlx_aimv2 import owner
from mlx_aimv2.checkpoints.layouts import ovis2_visual_tokenizer
from mlx_aimv2.checkpoints.mlx_io import load_into
from mlx_aimv2.config import VisionConfig
from mlx_aimv2.models.visual_tokenizer import VisualTokenizer, visual_embeddings


def _tiny_ovis2(image_size: int):
    from transformers import Ovis2ForConditionalGeneration

    config = tiny_ovis2_config(image_size=image_size)
    return randomize(Ovis2ForConditionalGeneration(config), seed=3), config.vision_config


@pytest.mark.parametrize("image_size", [56, 84])  # 4x4 tokens merge to 2x2, 6x6 to 3x3
def test_the_visual_tokenizer_equals_transformers_ovis2(image_size):
    import torch

    model, v = _tiny_ovis2(image_size)
    weights = {k: t.detach().numpy() for k, t in model.state_dict().items()}
    pixels = np.random.default_rng(0).normal(size=(2, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():
        out = model.model.vision_tower(torch_pixels(pixels))
        want_probs = out.pooler_output.numpy()
        want_embeds = model.model.get_image_features(torch_pixels(pixels)).pooler_output.numpy()

    def ours():
        import mlx.core as mx

        mine, table = ovis2_visual_tokenizer({k: mx.array(a) for k, a in weights.items()})
        config = VisionConfig(hidden_size=64, depth=2, num_heads=2, mlp_hidden=128, patch_size=14,
                              image_size=image_size, eps=v.rms_norm_eps)  # fmt: skip
        tokenizer = VisualTokenizer(config, vocab_size=48, hidden_stride=2)
        load_into(tokenizer, mine, "tiny Ovis2", dtype=mx.float32)
        probs = tokenizer(mx.array(pixels))
        return np.array(probs), np.array(visual_embeddings(probs, table))

    probs, embeds = owner.run(ours)
    assert probs.shape == (2, (image_size // 28) ** 2, 48) and np.allclose(probs[..., -5:], 0)
    np.testing.assert_allclose(probs[..., :-5], want_probs, atol=1e-5)
    np.testing.assert_allclose(embeds, want_embeds, atol=1e-5)
    assert want_probs.std() > 1e-3  # not uniform: the check can fail


def test_a_grid_the_stride_does_not_divide_is_zero_padded_then_merged():
    def ours(tokens):
        import mlx.core as mx

        return np.array(VisualTokenizer(VisionConfig(hidden_size=4, depth=1, num_heads=1, mlp_hidden=8, patch_size=14,
                                                     image_size=42), vocab_size=8, hidden_stride=2).merge(mx.array(tokens)))  # fmt: skip

    tokens = np.random.default_rng(1).normal(size=(2, 9, 4)).astype(np.float32)  # a 3x3 grid
    grid = np.zeros((2, 4, 4, 4), np.float32)
    grid[:, :3, :3] = tokens.reshape(2, 3, 3, 4)
    want = [np.concatenate([grid[n, 2 * i, 2 * j], grid[n, 2 * i, 2 * j + 1], grid[n, 2 * i + 1, 2 * j],
                            grid[n, 2 * i + 1, 2 * j + 1]]) for n in range(2) for i in range(2) for j in range(2)]  # fmt: skip
    np.testing.assert_array_equal(owner.run(ours, tokens), np.array(want).reshape(2, 4, 16))


IMAGE_TOKEN, INDICATORS = 290, [291, 292, 293, 294, 295]  # in the tiny language model's vocabulary


def _tiny_ovis2_model(seed: int = 3):
    from transformers import Ovis2ForConditionalGeneration

    # at a scale where attention is not uniform: RoPE and the heads' grouping then change the answer
    return randomize(
        Ovis2ForConditionalGeneration(tiny_ovis2_config(300, IMAGE_TOKEN, INDICATORS)), seed=seed, scale=0.25
    )


def _ours(torch_model):
    """vlm.Ovis2 built from the transformers model's own config (as a folder's config.json reads)."""
    import mlx.core as mx

    from mlx_aimv2.checkpoints.layouts import ovis2_weights
    from mlx_aimv2.vlm.ovis2 import build

    weights = ovis2_weights({k: mx.array(t.detach().numpy()) for k, t in torch_model.state_dict().items()}, tied=True)
    model = build(torch_model.config.to_dict(), weights, "tiny Ovis2")
    load_into(model, weights, "tiny Ovis2", dtype=mx.float32)
    return model


def test_ovis2_first_step_logits_and_32_greedy_tokens_equal_transformers():
    """A prompt with an image's visual tokens and the five indicator tokens: the first step's logits
    to 1e-4 and the same 32 greedy tokens as transformers' Ovis2ForConditionalGeneration."""
    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    import torch

    torch_model = _tiny_ovis2_model()
    torch_model.eval()
    ids = [5, 17, 42, INDICATORS[0], *([IMAGE_TOKEN] * 4), INDICATORS[1], *([IMAGE_TOKEN] * 4), INDICATORS[4], 77, 9]
    pixels = np.random.default_rng(0).normal(size=(2, 56, 56, 3)).astype(np.float32)  # a thumbnail and one tile
    with torch.no_grad():
        want = torch_model(input_ids=torch.tensor([ids]), pixel_values=torch_pixels(pixels)).logits.numpy()
        gen = torch_model.generate(input_ids=torch.tensor([ids]), pixel_values=torch_pixels(pixels),
                                   max_new_tokens=32, do_sample=False, min_new_tokens=32)  # fmt: skip
    want_tokens = gen[0, len(ids) :].tolist()

    def ours():
        import mlx.core as mx

        model = _ours(torch_model)
        logits = np.array(model(mx.array([ids]), mx.array(pixels)))
        return logits, list(model.tokens(mx.array([ids]), mx.array(pixels), 32))  # greedy

    logits, tokens = owner.run(ours)
    np.testing.assert_allclose(logits, want, atol=1e-4)
    assert tokens == want_tokens
    assert len(set(want_tokens)) > 1 and np.abs(want[0, -1]).max() > 1e-2  # not a constant answer: it can fail


@pytest.mark.parametrize("size", [(70, 70), (60, 180), (200, 90)])  # square; wide (several tiles); tall
def test_preprocessing_equals_transformers_ovis2_image_processor(size):
    """Ovis2ImageProcessor's crops (the thumbnail, then the tiles) to 1e-6, and the grid the prompt
    describes, with the <image> text Ovis2Processor writes for it."""
    from PIL import Image
    from transformers.models.ovis2.image_processing_pil_ovis2 import Ovis2ImageProcessorPil

    from mlx_aimv2.vlm.processor import image_prompt, preprocess

    h, w = size
    image = Image.fromarray(np.random.default_rng(h + w).integers(0, 255, (h, w, 3), dtype=np.uint8))
    theirs = Ovis2ImageProcessorPil(crop_to_patches=True, size={"height": 56, "width": 56}, max_patches=12)
    want = theirs(images=[image], return_tensors="np")
    crops, grid = preprocess(image, side=56, max_tiles=12)
    np.testing.assert_allclose(crops, want["pixel_values"].transpose(0, 2, 3, 1), atol=1e-6)
    assert list(grid) == want["grids"][0].tolist()
    text = image_prompt(grid, tokens_per_crop=4)
    assert text.count("<IMG_ATOM>") == 4 * len(crops) and text.startswith("<IMG_START>") and text.endswith("<IMG_END>")
    assert text.count("<IMG_ROW>") == (grid[0] - 1 if len(crops) > 1 else 0)
    assert len(crops) > 1 or size == (70, 70)  # the wide and tall images take several tiles: the check can fail


@pytest.fixture(scope="module")
def ovis2_folder(tmp_path_factory):
    return tiny_ovis2_folder(tmp_path_factory.mktemp("ovis2"))


def _transformers_answer(folder, model, images, question, max_tokens):
    """transformers' own prompt (Ovis2Processor over the folder's tokenizer, the chat template's text)
    and its greedy answer, up to <|im_end|>."""
    import torch
    from PIL import Image
    from transformers import Ovis2Processor, PreTrainedTokenizerFast
    from transformers.models.ovis2.image_processing_pil_ovis2 import Ovis2ImageProcessorPil

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    images = [Image.open(i) for i in images]
    pixels = Ovis2ImageProcessorPil(crop_to_patches=True, size={"height": 56, "width": 56}, max_patches=12)
    processor = Ovis2Processor(image_processor=pixels, tokenizer=tokenizer, image_seq_length=4)
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + "<image>\n" * len(images)
            + f"{question}<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip
    inputs = processor(images=images, text=text, return_tensors="pt")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        out = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], do_sample=False,
                             max_new_tokens=max_tokens, eos_token_id=end)  # fmt: skip
    return inputs["input_ids"][0].tolist(), [t for t in out[0, inputs["input_ids"].shape[1] :].tolist() if t != end]


def _picture(path, h, w, seed):
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def converted(ovis2_folder, tmp_path_factory):
    """The tiny Ovis2 as `mlx-aimv2 convert` writes it."""
    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    from helpers import cli

    out = tmp_path_factory.mktemp("converted") / "ovis2-mlx"
    r = cli("convert", ovis2_folder[0], out)
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("shape", [(70, 70), (60, 150)])  # square: the thumbnail alone; wide: thumbnail and 3 tiles
def test_a_converted_ovis2_chats_the_token_ids_transformers_generates(ovis2_folder, converted, tmp_path, shape):
    """The bar: a tiny Ovis2 of transformers, converted by `mlx-aimv2 convert`, answers
    `chat IMAGE "Describe the image." --max-tokens 24 --temp 0 --json` with transformers' greedy ids."""
    import json

    from helpers import cli

    folder, model, ids = ovis2_folder
    picture = _picture(tmp_path / "picture.png", *shape, seed=sum(shape))
    _, want = _transformers_answer(folder, model, [picture], "Describe the image.", 24)
    r = cli("chat", picture, "Describe the image.", "--model", converted, "--max-tokens", "24", "--temp", "0", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert got["tokens"] == want and len(set(want)) > 3  # a varied answer: the check can fail
    assert json.loads((converted / "config.json").read_text())["mlx_aimv2_kind"] == "ovis2"


def test_aidc_ais_original_layout_converts_and_chats_as_transformers_does(tmp_path):
    """`mlx-aimv2 convert AIDC-AI/Ovis2-*`: the remote-code folder (its names, config.json and a
    tokenizer without the image tokens) converts, and the converted folder and the original read as
    it is both answer with the greedy ids of transformers' model made from the same weights."""
    import json

    from helpers import cli, tiny_original_ovis2_folders

    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    hf, original, model = tiny_original_ovis2_folders(tmp_path / "twins")
    picture = _picture(tmp_path / "wide.png", 60, 150, 9)
    _, want = _transformers_answer(hf, model, [picture], "Describe the image.", 24)
    r = cli("convert", original, tmp_path / "converted")
    assert r.exit_code == 0, r.output
    for folder in (tmp_path / "converted", original):
        r = cli("chat", picture, "Describe the image.", "--model", folder, "--max-tokens", "24", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output.strip().splitlines()[-1])["tokens"] == want and len(set(want)) > 3


def test_a_prompt_with_two_images_equals_transformers(ovis2_folder, tmp_path):
    """Two images in one prompt: transformers' prompt ids and crops, and its greedy answer."""
    from mlx_aimv2.vlm.chat import Ovis2Chat

    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    folder, model, _ = ovis2_folder
    pictures = [_picture(tmp_path / "a.png", 60, 150, 1), _picture(tmp_path / "b.png", 80, 64, 2)]
    want_ids, want = _transformers_answer(folder, model, pictures, "Which differs?", 16)
    bot = Ovis2Chat(folder)
    assert bot.prompt_ids("Which differs?", pictures)[0] == want_ids
    assert bot.generate("Which differs?", pictures, max_tokens=16)["tokens"] == want and len(set(want)) > 3
    one = bot.generate("Which differs?", pictures[:1], max_tokens=16)["tokens"]
    assert one != want  # the second image changes the answer


def test_sampling_is_seeded_and_a_tiny_nucleus_is_greedy(ovis2_folder):
    from mlx_aimv2.vlm.chat import Ovis2Chat

    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    from helpers import PHOTO

    bot = Ovis2Chat(ovis2_folder[0])
    greedy = bot.generate("Describe the image.", [PHOTO], 16)["tokens"]
    hot = [bot.generate("Describe the image.", [PHOTO], 16, temp=1.5, seed=s)["tokens"] for s in (1, 1, 2)]
    assert hot[0] == hot[1] and hot[0] != hot[2] and hot[0] != greedy
    assert bot.generate("Describe the image.", [PHOTO], 16, temp=1.5, top_p=1e-9, seed=3)["tokens"] == greedy


def test_a_quantized_ovis2_loads_as_it_was_written_and_keeps_the_answer_close(ovis2_folder, converted, tmp_path):
    """`convert -q`: the language model quantized as mlx-lm does (linears and the embedding), the
    encoder's blocks as this package does, the visual head and table in float; load() gives the chat
    class; the first step's logits stay close to the float model's (8-bit) and it answers (4-bit). On
    the CPU it runs dequantized by default (the same numbers: the same weights), quantized when asked."""
    import json

    import mlx.nn as nn
    from helpers import PHOTO, cli

    logits = {}
    for bits in (8, 4):
        out = tmp_path / f"q{bits}"
        r = cli("convert", ovis2_folder[0], out, "-q", "--q-bits", bits, "--q-group-size", "32")
        assert r.exit_code == 0, r.output
        assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == bits
        bot = mlx_aimv2.load(str(out), keep_quantized=True)
        assert type(bot).__name__ == "Ovis2Chat"
        layers = dict(bot.model.named_modules())
        assert isinstance(layers["language_model.model.embed_tokens"], nn.QuantizedEmbedding)
        assert isinstance(layers["language_model.model.layers.0.mlp.down_proj"], nn.QuantizedLinear)
        assert isinstance(layers["visual_tokenizer.encoder.trunk.blocks.0.mlp.fc1"], nn.QuantizedLinear)
        assert type(layers["visual_tokenizer.head_linear"]) is nn.Linear
        logits[bits] = _first_logits(bot, PHOTO)
        assert bot.generate("Describe the image.", [PHOTO], 8)["tokens"]
        on_cpu = mlx_aimv2.load(str(out))  # the default on the CPU: dequantized
        assert not any(
            isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in on_cpu.model.named_modules()
        )
        np.testing.assert_allclose(_first_logits(on_cpu, PHOTO), logits[bits], atol=1e-4)
    full = _first_logits(mlx_aimv2.load(str(converted)), PHOTO)
    cosine = lambda a, b: float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert cosine(logits[8], full) > 0.99 and cosine(logits[4], full) > 0.8
    assert cosine(logits[8], full) > cosine(logits[4], full)  # more bits, closer: the check can fail


def _first_logits(bot, image) -> np.ndarray:
    import mlx.core as mx

    ids, crops = bot.prompt_ids("Describe the image.", [image])
    return owner.run(lambda: np.array(bot.model(mx.array([ids]), mx.array(crops))[0, -1]))


def test_chat_refuses_what_cannot_work_in_one_line(ovis2_folder, tmp_path, monkeypatch):
    """An encoder given to chat, a missing or unreadable image, a prompt longer than the model reads,
    a bad temperature, and a hub id with no network and no cache: one line each, exit 1."""
    import json
    import shutil

    from helpers import PHOTO, cli, one_clear_line

    folder, _, _ = ovis2_folder
    one_clear_line(cli("chat", PHOTO, "what?", "--model", "demo"), "demo: an encoder", "not an Ovis2 model")
    one_clear_line(cli("chat", tmp_path / "nope.jpg", "what?", "--model", folder), "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    one_clear_line(cli("chat", tmp_path / "bad.jpg", "what?", "--model", folder), "bad.jpg")
    short = tmp_path / "short"
    shutil.copytree(folder, short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 64  # a wide image's prompt takes ~90 tokens
    (short / "config.json").write_text(json.dumps(cfg))
    wide = _picture(tmp_path / "wide.png", 60, 150, 0)
    one_clear_line(cli("chat", wide, "what?", "--model", short), "tokens", "reads 64", "fewer or smaller images")
    (short / "tokenizer.json").write_text("{not json")  # a damaged tokenizer: tokenizers raises a bare Exception
    one_clear_line(cli("chat", wide, "what?", "--model", short), "tokenizer.json", "not a tokenizer it can read")
    (short / "tokenizer.json").unlink()
    one_clear_line(cli("chat", wide, "what?", "--model", short), "no tokenizer.json")
    one_clear_line(cli("chat", PHOTO, "what?", "--model", folder, "--top-p", "0"), "--top-p")
    # the commands that need an AIMv2 encoder, given an Ovis2: one line naming chat (they crashed in the
    # model class: 'Ovis2Chat' object has no attribute 'check_layers')
    for args in (["embed", PHOTO, "--model", folder], ["classify", PHOTO, "cat", "dog", "--model", folder],
                 ["index", PHOTO, "--db", tmp_path / "i.aimv2", "--model", folder],
                 ["export", folder, tmp_path / "exported", "--format", "transformers"]):  # fmt: skip
        one_clear_line(cli(*args), "an Ovis2 vision-language model", "mlx-aimv2 chat")
    assert not (tmp_path / "i.aimv2").exists() and not (tmp_path / "exported").exists()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    one_clear_line(cli("chat", PHOTO, "what?", "--model", "thisisiron/Ovis2-1B-hf"), "thisisiron/Ovis2-1B-hf",
                   "must be downloaded first", "hf download thisisiron/Ovis2-1B-hf")  # fmt: skip


def test_chat_from_several_threads_at_once_gives_the_serial_answer(ovis2_folder):
    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    from concurrent.futures import ThreadPoolExecutor

    from helpers import PHOTO

    from mlx_aimv2.vlm.chat import Ovis2Chat

    bot = Ovis2Chat(ovis2_folder[0])
    serial = bot.generate("what is in the picture?", [PHOTO], max_tokens=8)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: bot.generate("what is in the picture?", [PHOTO], max_tokens=8), range(8)))
    assert all(a == serial for a in answers) and serial["tokens"]


@pytest.mark.parametrize("command", ["chat", "convert", "load"])
def test_without_mlx_lm_an_ovis2_folder_is_one_line_with_the_install(ovis2_folder, tmp_path, command):
    """chat, convert and load() of an Ovis2 folder where mlx-lm is not installed: one line naming the
    extra; everything else loads without it (its import is the vlm extra's door, vlm/extra.py)."""
    import subprocess
    import sys

    from helpers import PHOTO

    folder = str(ovis2_folder[0])
    argv = {
        "chat": ["chat", str(PHOTO), "what?", "--model", folder],
        "convert": ["convert", folder, str(tmp_path / "o")],
    }
    if command == "load":
        code = f"import sys; sys.modules['mlx_lm'] = None; import mlx_aimv2; mlx_aimv2.load('demo'); mlx_aimv2.load({folder!r})"
    else:
        code = "import sys; sys.modules['mlx_lm'] = None; from mlx_aimv2.cli import console; console()"
    p = subprocess.run(
        [sys.executable, "-c", code, *argv.get(command, [])], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 1, p.stderr[-1500:]
    assert "pip install 'mlx-aimv2[vlm]'" in p.stderr.strip().splitlines()[-1], p.stderr[-1500:]
    if command != "load":
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr[-1500:]


@pytest.mark.parametrize("tied", [True, False])
def test_the_size_formula_counts_what_transformers_holds_and_what_convert_quantizes(tied):
    """`mlx-aimv2 models` sizes each published Ovis2 from its shapes: the formula gives a tiny
    transformers Ovis2's exact parameter count, and the count of the weights `convert -q` packs."""
    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    import mlx.nn as nn
    from transformers import Ovis2ForConditionalGeneration

    from mlx_aimv2.checkpoints.ovis2 import quantize_ovis2
    from mlx_aimv2.config.ovis2 import Qwen, params_of
    from mlx_aimv2.vlm.ovis2 import build

    config = tiny_ovis2_config(tied=tied)
    theirs = Ovis2ForConditionalGeneration(config)
    total, packed = params_of(VisionConfig(hidden_size=64, depth=2, num_heads=2, mlp_hidden=128, patch_size=14,
                                           image_size=56), Qwen(64, 2, 4, 2, 128, 300, tied), 48, 2)  # fmt: skip
    assert total == sum(p.numel() for p in theirs.parameters())

    def quantized_count():
        import mlx.core as mx

        from mlx_aimv2.checkpoints.layouts import ovis2_weights

        weights = ovis2_weights({k: mx.array(t.detach().numpy()) for k, t in theirs.state_dict().items()}, tied)
        model = build(config.to_dict(), weights, "tiny")
        quantize_ovis2(model, {"bits": 4, "group_size": 32, "mode": "affine"})
        layers = [m for _, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
        return sum(m.scales.size * m.group_size for m in layers)

    assert owner.run(quantized_count) == packed


def test_models_lists_each_published_ovis2_with_its_sizes():
    from helpers import cli

    r = cli("models")
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[1:] for line in r.output.splitlines() if line.startswith("AIDC-AI/Ovis2-")}
    assert sorted(rows) == sorted(f"AIDC-AI/Ovis2-{s}" for s in ("1B", "2B", "4B", "8B", "16B", "34B"))
    for params, bf16, eight, four in rows.values():
        assert float(four[:-1]) < float(eight[:-1]) < float(bf16[:-1])
        assert abs(float(bf16[:-1]) - 2 * float(params[:-1])) < 0.02  # two bytes a weight (the figures rounded)
    assert rows["AIDC-AI/Ovis2-1B"][0] == "1.13B"  # AIMv2-L at 448, its visual head and table, Qwen2.5-0.5B
