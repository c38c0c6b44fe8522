"""Reference checkpoints for the tests: transformers' AIMv2 with random weights, saved in each layout.

Nothing here is our code under test: the ml-aim and timm key names follow the published mappings
(ml-aim's own keys; timm's `_convert_aimv2` string replaces)."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

TINY_VISION = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=56,
    patch_size=14,
    use_head=False,
)

ROOT = Path(__file__).parent.parent  # the checkout
PHOTO = ROOT / "examples" / "grace_hopper.jpg"  # the one real photo the tests share
QUIET = dict(log=lambda *a: None, progress=False)  # a Trainer that says nothing
# the tiny training run every training test starts from; each test overrides what it is about (None
# drops a key back to TrainConfig's default)
TINY_RUN = dict(encoder="tiny", image_size=56, batch_size=8, steps=4, warmup=1, log_every=1, save_every=1000,
                vocab_size=300, threads=1)  # fmt: skip


def tiny_config(data, out, **kw):
    """A TrainConfig for a tiny run over `data` into `out`: TINY_RUN with `kw` over it."""
    from mlx_aimv2.config import load_config

    return load_config(overrides={**TINY_RUN, "data": str(data), "out": str(out), **kw})


def randomize(model, seed=0, scale=0.05):
    """Re-draw every weight so nothing is an identity (norm gains around 1, linears of `scale`)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif "logit_scale" in name:
                p.fill_(2.0)
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_vision(tmp: Path, seed=0, **over):
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    cfg = Aimv2VisionConfig(**{**TINY_VISION, **over})
    model = randomize(Aimv2VisionModel(cfg), seed)
    folder = tmp / "hf"
    model.save_pretrained(folder)
    return model, folder


def hf_lit(tmp: Path, seed=0, vocab_size=300, eos=299, context=16):
    from transformers import Aimv2Config, Aimv2Model

    vision = {**TINY_VISION, "use_head": True}
    text = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=1,
        max_position_embeddings=context,
        eos_token_id=eos,
    )
    model = randomize(Aimv2Model(Aimv2Config(vision_config=vision, text_config=text, projection_dim=64)), seed)
    folder = tmp / "hf_lit"
    model.save_pretrained(folder)
    # transformers' sdpa path drops the text tower's causal mask; eager keeps it (ml-aim's tower is causal)
    return Aimv2Model.from_pretrained(folder, attn_implementation="eager").eval(), folder


def state_dict_np(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if "position_ids" not in k}


def to_mlaim_keys(sd: dict) -> dict:
    """transformers-native -> ml-aim keys (the HF-tf converter's table, read backwards)."""
    out, qkv = {}, {}
    for k, v in sd.items():
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)", k)
        if m:
            i, t = m.groups()
            if t.startswith("attention.") and t[10] in "qkv" and t[11:] == "_proj.weight":
                qkv.setdefault(i, {})[t[10]] = v
                continue
            t = {
                "attention.out_proj.weight": "attn.proj.weight",
                "ffn.gate_proj.weight": "mlp.fc1.weight",
                "ffn.up_proj.weight": "mlp.fc3.weight",
                "ffn.down_proj.weight": "mlp.fc2.weight",
                "rms_norm1.weight": "norm_1.weight",
                "rms_norm2.weight": "norm_2.weight",
            }[t]
            out[f"trunk.blocks.{i}.{t}"] = v
        else:
            out[
                {
                    "embeddings.patch_embed.weight": "preprocessor.patchifier.proj.weight",
                    "embeddings.patch_embed.bias": "preprocessor.patchifier.proj.bias",
                    "embeddings.rms_norm.weight": "preprocessor.patchifier.norm.weight",
                    "embeddings.position_embedding.weight": "preprocessor.pos_embed",
                    "rms_norm.weight": "trunk.post_trunk_norm.weight",
                }[k]
            ] = v
    for i, d in qkv.items():
        out[f"trunk.blocks.{i}.attn.qkv.weight"] = np.concatenate([d["q"], d["k"], d["v"]], 0)
    if "preprocessor.pos_embed" in out:
        out["preprocessor.pos_embed"] = out["preprocessor.pos_embed"][None]
    return out


def to_timm_keys(mlaim: dict) -> dict:
    """ml-aim -> timm: the string replaces of timm's _convert_aimv2, in its order."""
    out = {}
    for k, v in mlaim.items():
        for a, b in [
            ("norm_1", "norm1"),
            ("norm_2", "norm2"),
            ("preprocessor.patchifier.", "patch_embed."),
            ("preprocessor.pos_embed", "pos_embed"),
            ("trunk.", ""),
            ("post_trunk_norm.", "norm."),
            ("mlp.fc1", "mlp.fc1_g"),
            ("mlp.fc3", "mlp.fc1_x"),
        ]:
            k = k.replace(a, b)
        out[k] = v
    return out


def save_safetensors(sd: dict, file: Path):
    from safetensors.numpy import save_file

    file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(file))
    return file


def torch_pixels(x_nhwc: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


def bytes_to_unicode():
    """GPT-2 / CLIP's byte -> printable character table (a published constant)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_clip_vocab(folder: Path) -> dict:
    """A small CLIP-style vocab.json + merges.txt: every byte, byte</w>, a few merges, the two specials."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = [
        ("a", "t</w>"),
        ("c", "at</w>"),
        ("d", "o"),
        ("do", "g</w>"),
        ("p", "h"),
        ("ph", "o"),
        ("t", "o</w>"),
        ("pho", "to</w>"),
    ]
    tokens += [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return vocab


def cli(*args, **kw):
    """The `mlx-aimv2` command in this process, its warnings and library notes on stderr as the
    console command prints them (cli.messages)."""
    from typer.testing import CliRunner

    from mlx_aimv2.cli import app, messages

    with messages():
        return CliRunner().invoke(app, [str(a) for a in args], **kw)


@contextlib.contextmanager
def read_only_folder(src, where: Path):
    """`where` holding a copy of src (a file, or None for an empty folder), read-only as a disk is:
    a read-only bind mount where we may mount (root ignores file modes), else write bits cleared."""
    import pytest

    where.mkdir()
    if src is not None:
        shutil.copy(src, where / src.name)
    if os.geteuid() != 0:
        for f in where.iterdir():
            os.chmod(f, 0o444)
        os.chmod(where, 0o555)
        try:
            yield where
        finally:
            os.chmod(where, 0o755)
        return
    mnt = where.parent / (where.name + "-ro")
    mnt.mkdir()
    ok = subprocess.run(["mount", "--bind", str(where), str(mnt)], capture_output=True).returncode == 0
    if ok:
        ok = subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True).returncode == 0
        if not ok:
            subprocess.run(["umount", str(mnt)])
    if not ok:
        pytest.skip("running as root without mount rights: no way to make a read-only disk")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)])


def one_clear_line(r, *words, code=1):
    """A CLI result (helpers.cli): exit `code`, no traceback, the last line of output names every word."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    last = r.output.strip().splitlines()[-1]
    for w in words:
        assert str(w) in last, last
    return last


def write_shard(path: Path, samples: list) -> Path:
    """A webdataset shard: (key, {suffix: bytes}) members in order, as img2dataset writes them."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for suffix, data in members.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


OVIS2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<IMG_ATOM>", "<IMG_START>", "<IMG_GRID>", "<IMG_COL>",
                  "<IMG_ROW>", "<IMG_END>"]  # fmt: skip


def tiny_ovis2_config(vocab: int = 300, image_token_id=None, indicators=None, tied: bool = True, image_size: int = 56):
    """transformers' Ovis2Config of the tiny Ovis2 every test builds: an AIMv2 tower 64 wide, 2 blocks,
    patch 14, hidden stride 2, 48 visual words; a Qwen2 64 wide, 2 layers, 4 heads over 2 KV heads."""
    from transformers import Ovis2Config, Ovis2VisionConfig, Qwen2Config

    vision = Ovis2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image_size, patch_size=14, hidden_stride=2, vocab_size=48)  # fmt: skip
    text = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab, rope_theta=10000.0, tie_word_embeddings=tied)  # fmt: skip
    tokens = (
        {} if image_token_id is None else {"image_token_id": image_token_id, "visual_indicator_token_ids": indicators}
    )
    return Ovis2Config(vision_config=vision.to_dict(), text_config=text.to_dict(), visual_vocab_size=48, hidden_size=64,
                       vocab_size=vocab, tie_word_embeddings=tied, **tokens)  # fmt: skip


def tiny_ovis2_folder(folder: Path):
    """A tiny Ovis2 in transformers' layout with random weights, saved as AIDC-AI's folders are
    (config.json, weights, tokenizer.json: a byte-level BPE trained here, with Qwen's and Ovis2's
    special tokens). Returns (folder, the transformers model, the special tokens' ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Ovis2ForConditionalGeneration

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["a red circle at the top left", "what is in the picture?", "You are a helpful assistant.",
              "system user assistant", "a blue square in the center"] * 20  # fmt: skip
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=280, special_tokens=OVIS2_SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    tok.save(str(Path(folder) / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in OVIS2_SPECIALS}
    config = tiny_ovis2_config(tok.get_vocab_size(), ids["<IMG_ATOM>"], [ids[t] for t in OVIS2_SPECIALS[4:]])
    # at a larger scale than randomize's default: an answer that varies, and varies with the image
    model = randomize(Ovis2ForConditionalGeneration(config), seed=5, scale=0.25).eval()
    model.save_pretrained(folder)
    return Path(folder), model, ids


@contextlib.contextmanager
def served(*args, wait_s: float = 180):
    """A real `mlx-aimv2 serve ARGS` process on a free localhost port: yields its URL once /health
    answers, then stops it as Ctrl-C does."""
    import signal
    import socket
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlx_aimv2", "serve", *map(str, args), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError("the server did not start: " + proc.stderr.read()[-2000:]) from None
                time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        finally:
            proc.kill()


def tiny_original_ovis2_folders(root: Path):
    """The same tiny Ovis2 twice: in transformers' layout (root/hf) and in AIDC-AI's original
    remote-code layout (root/original), renamed as transformers' convert_ovis2_weights_to_hf.py reads
    it backwards: llm.*, vte.weight, visual_tokenizer.head.0/1, the AIMv2 backbone in ml-aim's names,
    a config.json with llm_config and visual_tokenizer_config, and a tokenizer without Ovis2's image
    tokens (the remote code used negative ids); the hf tokenizer has them added after its own, as
    transformers' conversion adds them. Returns (hf folder, original folder, the transformers model)."""
    from safetensors.numpy import save_file
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Ovis2ForConditionalGeneration

    hf, original = Path(root) / "hf", Path(root) / "original"
    hf.mkdir(parents=True)
    original.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["a red circle at the top left", "Describe the image.", "You are a helpful assistant.",
              "system user assistant"] * 20  # fmt: skip
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=270, special_tokens=OVIS2_SPECIALS[:3],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    tok.save(str(original / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in OVIS2_SPECIALS[3:]])
    tok.save(str(hf / "tokenizer.json"))
    ids = [tok.token_to_id(t) for t in OVIS2_SPECIALS[3:]]
    config = tiny_ovis2_config(300, ids[0], ids[1:])
    model = randomize(Ovis2ForConditionalGeneration(config), seed=6, scale=0.25).eval()
    model.save_pretrained(hf)
    names = {"model.language_model.": "llm.model.", "lm_head.": "llm.lm_head.",
             "model.visual_embeddings_table.weight": "vte.weight",
             "model.vision_tower.head_linear.": "visual_tokenizer.head.0.",
             "model.vision_tower.head_norm.": "visual_tokenizer.head.1."}  # fmt: skip
    weights, tower = {}, {}
    for k, v in state_dict_np(model).items():
        if k.startswith("model.vision_tower.transformer."):
            tower[k[len("model.vision_tower.transformer.") :].replace("patch_embedding", "patch_embed")] = v
        else:
            theirs = next(t for t in names if k.startswith(t))
            weights[names[theirs] + k[len(theirs) :]] = v
    weights.update({f"visual_tokenizer.backbone.{k}": v for k, v in to_mlaim_keys(tower).items()})
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(original / "model.safetensors"))
    v = config.vision_config
    backbone = {k: getattr(v, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                           "image_size", "patch_size", "rms_norm_eps")}  # fmt: skip
    cfg = {"model_type": "ovis", "architectures": ["Ovis"], "hidden_size": 64, "multimodal_max_length": 8192,
           "conversation_formatter_class": "QwenConversationFormatter",
           "llm_config": {**config.text_config.to_dict(), "rope_theta": 10000.0, "model_type": "qwen2"},
           "visual_tokenizer_config": {"model_type": "aimv2_visual_tokenizer", "vocab_size": 48, "hidden_stride": 2,
                                       "tokenize_function": "softmax", "tau": 1.0, "drop_cls_token": False,
                                       "backbone_config": {"model_type": "aimv2", "num_channels": 3, "qkv_bias": False,
                                                           "use_bias": False, **backbone}}}  # fmt: skip
    (original / "config.json").write_text(json.dumps(cfg))
    return hf, original, model


def headless_browser():
    """Debian's chromium, headless, driven by selenium (skips where either is missing)."""
    import pytest

    webdriver = pytest.importorskip("selenium.webdriver", reason="the page's test drives chromium with selenium")
    driver_path = shutil.which("chromedriver")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not driver_path or not chrome:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # OpenBLAS preloaded into chromium crashes it
    return webdriver.Chrome(service=Service(driver_path, env=env), options=opts)
