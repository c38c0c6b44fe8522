"""Text tokenizers through the `tokenizers` package: the LiT model's CLIP BPE (from vocab.json and
merges.txt), any tokenizer.json (e.g. SigLIP's, as in pre-training), and a BPE trained on your own
captions. All produce fixed-length (77) id rows: truncated, then padded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from tokenizers import (
    AddedToken,
    Regex,
    SentencePieceUnigramTokenizer,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from .atomic import write_file
from .errors import UserError, is_file_fault
from .hub import fetch_file, is_hub_id

# A caption longer than this is cut before tokenizing: 77 tokens never need more, and BPE training
# time grows faster than linearly with a text's length (a 2-million-character caption stalled it).
MAX_CAPTION_CHARS = 4096

CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def not_unicode(text: str) -> Optional[str]:
    """Why `text` is no text a tokenizer can read, or None: a lone surrogate (JSON may carry one, and
    Python keeps one from a file name it could not decode), which no UTF-8 encoder takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate \\u{ord(text[e.start]):04x} at character {e.start}"
    return None


class TextTokenizer:
    def __init__(self, tok, pad_id: int, eos_id: Optional[int], length: int = 77):
        self.tok, self.pad_id, self.eos_id, self.length = tok, pad_id, eos_id, length

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        """(len(texts), length) int32 ids; an over-long text keeps its end-of-text token."""
        rows = []
        for enc in self.tok.encode_batch([t[:MAX_CAPTION_CHARS] for t in texts]):
            ids = enc.ids
            if len(ids) > self.length:
                ids = ids[: self.length - 1] + ([self.eos_id] if self.eos_id is not None else [ids[self.length - 1]])
            rows.append(ids + [self.pad_id] * (self.length - len(ids)))
        return np.asarray(rows, dtype=np.int32).reshape(-1, self.length)

    def decode(self, ids) -> str:
        """Token ids back to text, up to the end-of-text token, without special tokens."""
        ids = [int(i) for i in ids]
        if self.eos_id is not None and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tok.decode([i for i in ids if i != self.pad_id], skip_special_tokens=True).strip()


def clip_tokenizer(folder: Path, length: int = 77) -> TextTokenizer:
    """CLIP's byte-level BPE built from a folder's vocab.json + merges.txt (the LiT hub repo's files)."""

    vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
    for f in (vocab, merges):
        if not f.is_file():
            raise UserError(f"{f}: missing; the LiT checkpoint folder needs vocab.json and merges.txt for text")
    try:
        bpe = models.BPE.from_file(
            str(vocab), str(merges), unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix=""
        )
    except Exception as e:
        if not is_file_fault(e):
            raise
        raise UserError(f"{vocab.parent}: cannot build the CLIP tokenizer ({e})") from None
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    v = json.loads(vocab.read_text())
    bos, eos = v["<|startoftext|>"], v["<|endoftext|>"]
    # literal "<|endoftext|>" in a text is the special token, as in transformers' CLIPTokenizer and open_clip

    tok.add_special_tokens([AddedToken(t, normalized=False) for t in ("<|startoftext|>", "<|endoftext|>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)]
    )
    return TextTokenizer(tok, pad_id=eos, eos_id=eos, length=length)


def load_tokenizer(path: Path, length: int = 77) -> TextTokenizer:
    """A tokenizer.json (file or folder), a folder with CLIP's vocab.json + merges.txt, or a hub repo
    id (e.g. google/siglip-base-patch16-224: its tokenizer.json, else its SentencePiece model)."""

    path = Path(path)

    if not path.exists() and is_hub_id(str(path)):
        return _from_hub(str(path), length)
    if path.is_dir() and not (path / "tokenizer.json").is_file():
        return clip_tokenizer(path, length)
    f = path / "tokenizer.json" if path.is_dir() else path
    if not f.is_file():
        raise UserError(
            f"{f}: no such tokenizer file; give a tokenizer.json or train one with `mlx-aimv2 tokenizer train`"
        )
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception as e:
        if not is_file_fault(e):
            raise
        raise UserError(f"{f}: not a valid tokenizer.json ({e})") from None
    vocab = tok.get_vocab()
    pad = next((vocab[t] for t in ("<pad>", "[PAD]", "<|pad|>") if t in vocab), None)
    eos = next((vocab[t] for t in ("</s>", "<|endoftext|>", "[SEP]", "<eos>") if t in vocab), None)
    if pad is None:
        pad = eos if eos is not None else 0
    return TextTokenizer(tok, pad_id=pad, eos_id=eos, length=length)


def _from_hub(repo: str, length: int) -> TextTokenizer:
    """tokenizer.json from a hub repo (or the local cache when offline); SentencePiece as a fallback."""

    try:
        return load_tokenizer(fetch_file(repo, "tokenizer.json"), length)
    except UserError as first:
        try:
            spm = fetch_file(repo, "spiece.model")
        except UserError:
            raise first from None

    try:
        tok = SentencePieceUnigramTokenizer.from_spm(str(spm))
    except Exception as e:
        if not is_file_fault(e) and not isinstance(e, ImportError):
            raise
        raise UserError(
            f"{spm}: cannot convert the SentencePiece model ({e}); pip install protobuf, or give a tokenizer.json"
        ) from None
    vocab = tok.get_vocab()
    eos = vocab.get("</s>")
    return TextTokenizer(tok, pad_id=vocab.get("<pad>", eos if eos is not None else 0), eos_id=eos, length=length)


BPE_SAMPLE = 20_000  # captions a run's own BPE learns from, spread over the corpus (ample for its 1024 tokens)


def train_bpe(texts: Iterable[str], vocab_size: int, out: Path, length: int = 77) -> TextTokenizer:
    """A byte-level BPE trained on captions, with <pad>=0 and </s> appended to every text."""

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t[:MAX_CAPTION_CHARS] for t in texts), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file(out, lambda tmp: tok.save(str(tmp)))  # whole or not at all
    return TextTokenizer(tok, pad_id=0, eos_id=1, length=length)
