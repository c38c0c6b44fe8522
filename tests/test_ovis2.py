"""Ovis2 (issue 39), its first part: the visual tokenizer on this package's AIMv2 encoder equals
transformers' Ovis2 (random weights, a tiny config): the probabilistic visual tokens and the visual
embeddings the language model reads. A grid the hidden stride does not divide is zero-padded first
(transformers' own padding fails on one: it pads the token axis, not the grid), checked against numpy."""

import numpy as np
import pytest
from helpers import randomize, tiny_ovis2_folder, torch_pixels

import mlx_aimv2  # noqa: F401  (the package's CPU set-up)
from mlx_aimv2 import owner
from mlx_aimv2.checkpoints.layouts import ovis2_visual_tokenizer
from mlx_aimv2.checkpoints.mlx_io import load_into
from mlx_aimv2.config import VisionConfig
from mlx_aimv2.models.visual_tokenizer import VisualTokenizer, visual_embeddings


def _tiny_ovis2(image_size: int):
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Ovis2VisionConfig, Qwen2Config

    vision = Ovis2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image_size, patch_size=14, hidden_stride=2, vocab_size=48)  # fmt: skip
    text = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=300)  # fmt: skip
    config = Ovis2Config(vision_config=vision.to_dict(), text_config=text.to_dict(), visual_vocab_size=48,
                         hidden_size=64)  # fmt: skip
    return randomize(Ovis2ForConditionalGeneration(config), seed=3), vision


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
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Ovis2VisionConfig, Qwen2Config

    vision = Ovis2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                               image_size=56, patch_size=14, hidden_stride=2, vocab_size=48)  # fmt: skip
    text = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=300, rope_theta=10000.0, tie_word_embeddings=True)  # fmt: skip
    config = Ovis2Config(vision_config=vision.to_dict(), text_config=text.to_dict(), visual_vocab_size=48,
                         hidden_size=64, vocab_size=300, image_token_id=IMAGE_TOKEN,
                         visual_indicator_token_ids=INDICATORS, tie_word_embeddings=True)  # fmt: skip
    torch_model = randomize(Ovis2ForConditionalGeneration(config), seed=seed)
    return torch_model, vision, text


def _ours(torch_model, vision, text):
    import mlx.core as mx

    from mlx_aimv2.checkpoints.layouts import ovis2_weights
    from mlx_aimv2.vlm.ovis2 import Ovis2

    config = VisionConfig(hidden_size=64, depth=2, num_heads=2, mlp_hidden=128, patch_size=14, image_size=56,
                          eps=vision.rms_norm_eps)  # fmt: skip
    args = {k: text.to_dict()[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                           "num_attention_heads", "rms_norm_eps", "vocab_size",
                                           "num_key_value_heads", "tie_word_embeddings")}  # fmt: skip
    args["rope_theta"] = 10000.0
    model = Ovis2(config, 48, 2, args, IMAGE_TOKEN, INDICATORS)
    weights = {k: mx.array(t.detach().numpy()) for k, t in torch_model.state_dict().items()}
    load_into(model, ovis2_weights(weights, tied=True), "tiny Ovis2", dtype=mx.float32)
    return model


def test_ovis2_first_step_logits_and_32_greedy_tokens_equal_transformers():
    """A prompt with an image's visual tokens and the five indicator tokens: the first step's logits
    to 1e-4 and the same 32 greedy tokens as transformers' Ovis2ForConditionalGeneration."""
    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    import torch

    torch_model, vision, text = _tiny_ovis2_model()
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

        model = _ours(torch_model, vision, text)
        logits = np.array(model(mx.array([ids]), mx.array(pixels)))
        return logits, list(model.greedy(mx.array([ids]), mx.array(pixels), 32))

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


def test_chat_answers_as_transformers_ovis2_does(ovis2_folder, tmp_path):
    """`mlx-aimv2 chat IMAGE QUESTION --model FOLDER --json`: the prompt (the chat template with the
    image's thumbnail and tiles) and the greedy answer's tokens equal transformers' on the same folder."""
    pytest.importorskip("mlx_lm", reason="Ovis2's language model is mlx-lm's: pip install -e '.[vlm]'")
    import json

    import torch
    from helpers import cli
    from PIL import Image
    from transformers.models.ovis2.image_processing_pil_ovis2 import Ovis2ImageProcessorPil

    from mlx_aimv2.vlm.chat import Ovis2Chat

    folder, model, ids = ovis2_folder
    picture = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (60, 150, 3), dtype=np.uint8)).save(picture)
    bot = Ovis2Chat(folder)
    prompt_ids, crops = bot.prompt_ids("what is in the picture?", [str(picture)])
    theirs = Ovis2ImageProcessorPil(crop_to_patches=True, size={"height": 56, "width": 56}, max_patches=12)
    pixels = theirs(images=[Image.open(picture)], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(crops, pixels.transpose(0, 2, 3, 1), atol=1e-6)
    assert prompt_ids.count(ids["<IMG_ATOM>"]) == 4 * len(crops) and len(crops) > 2
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt_ids]), pixel_values=torch.tensor(pixels),
                             max_new_tokens=16, do_sample=False, eos_token_id=ids["<|im_end|>"])  # fmt: skip
    want = [t for t in out[0, len(prompt_ids) :].tolist() if t != ids["<|im_end|>"]]
    r = cli("chat", picture, "what is in the picture?", "--model", folder, "--json", "--max-tokens", "16")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output.strip().splitlines()[-1])
    assert got["tokens"] == want and len(want) > 0


def test_chat_refuses_what_cannot_work_in_one_line(ovis2_folder, tmp_path):
    from helpers import PHOTO, cli, one_clear_line

    folder, _, _ = ovis2_folder
    one_clear_line(cli("chat", PHOTO, "what?", "--model", "demo"), "not an Ovis2 model folder")
    one_clear_line(cli("chat", tmp_path / "nope.jpg", "what?", "--model", folder), "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    one_clear_line(cli("chat", tmp_path / "bad.jpg", "what?", "--model", folder), "bad.jpg")


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
