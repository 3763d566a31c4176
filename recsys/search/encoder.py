"""The semantic channel's text encoders: text -> unit vector, torch-free, the same at build and serve.

Two kinds, both read from a directory holding ``encoder.json`` and the tokenizer's
``tokenizer.json`` (HF ``tokenizers``, the Rust WordPiece the teacher was trained with):

- ``onnx``: a transformer exported to ONNX (fp32 or int8), mean pooling and L2 normalisation
  inside the graph, so the output is the sentence vector;
- ``static``: one vector per vocabulary token (int8 rows + a scale per row), a text being the
  normalised mean of its tokens' rows. No attention, no layers: a gather and a mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from recsys.pipeline.onnx import OnnxModel

ENCODER_JSON = "encoder.json"
TOKENIZER_JSON = "tokenizer.json"
MODEL_ONNX = "model.onnx"
TABLE = "table.npy"
SCALES = "scales.npy"
MAX_TOKENS = 32  # titles and queries are short; truncation keeps one long description from costing the batch


class TextEncoder(Protocol):
    dim: int

    def __call__(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32, unit rows (all-zero for a text with no known token)."""


@dataclass(frozen=True)
class EncoderFiles:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / ENCODER_JSON

    @property
    def tokenizer(self) -> Path:
        return self.root / TOKENIZER_JSON

    @property
    def model(self) -> Path:
        return self.root / MODEL_ONNX

    @property
    def table(self) -> Path:
        return self.root / TABLE

    @property
    def scales(self) -> Path:
        return self.root / SCALES


def load_tokenizer(path: Path, max_tokens: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    return tokenizer


def padded_ids(encoded: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids right-padded to the longest row, and the attention mask (1 = a real token)."""
    width = max(1, max((len(ids) for ids in encoded), default=1))
    ids = np.full((len(encoded), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encoded), width), dtype=np.int64)
    for row, row_ids in enumerate(encoded):
        ids[row, :len(row_ids)] = row_ids
        mask[row, :len(row_ids)] = 1
    return ids, mask


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class OnnxTextEncoder:
    """A transformer in ONNX Runtime: (input_ids, attention_mask) -> ``embedding``.

    Texts of a batch are padded to the longest; a dynamic-int8 model (whose activations' scale
    spans the whole input, padding included) runs each text alone and unpadded, so a text's vector
    never depends on what it was batched with."""

    def __init__(self, files: EncoderFiles, config: dict, threads: int = 1):
        self.tokenizer = load_tokenizer(files.tokenizer, int(config.get("max_tokens", MAX_TOKENS)))
        self.model = OnnxModel(files.model, threads)
        self.model.output = "embedding"
        self.dim = int(config["dim"])
        self.pad_id = int(config.get("pad_id", 0))

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        encoded = [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]
        if self.model.per_row:
            return np.vstack([self._run([ids]) for ids in encoded])
        return self._run(encoded)

    def _run(self, encoded: list[list[int]]) -> np.ndarray:
        input_ids, mask = padded_ids(encoded, self.pad_id)
        return self.model.session.run([self.model.output], {"input_ids": input_ids, "attention_mask": mask})[0]


class StaticTextEncoder:
    """Mean of int8 token rows (dequantised per gather), normalised. Special tokens are not added
    and unknown pieces are dropped: a text is its own known words' pieces."""

    def __init__(self, files: EncoderFiles, config: dict):
        self.tokenizer = load_tokenizer(files.tokenizer, int(config.get("max_tokens", MAX_TOKENS)))
        self.table = np.load(files.table, mmap_mode="r")
        self.scales = np.load(files.scales, mmap_mode="r")
        self.dim = int(self.table.shape[1])
        # The unknown-word piece's row is one vector for every unseen word: no direction at all.
        unk = getattr(self.tokenizer.model, "unk_token", None)
        self.unk_id = self.tokenizer.token_to_id(unk) if unk is not None else None

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for row, encoding in enumerate(encodings):
            ids = np.asarray(encoding.ids, dtype=np.int64)
            if self.unk_id is not None:
                ids = ids[ids != self.unk_id]
            if len(ids):
                out[row] = (self.table[ids].astype(np.float32) * self.scales[ids, None]).mean(axis=0)
        return _unit(out)


def read_config(directory: Path) -> dict:
    path = EncoderFiles(Path(directory)).config
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no text encoder: {ENCODER_JSON} is missing")
    return json.loads(path.read_text())


def load_text_encoder(directory: Path, threads: int = 1) -> TextEncoder:
    files = EncoderFiles(Path(directory))
    config = read_config(files.root)
    kind = config.get("kind")
    if kind == "onnx":
        return OnnxTextEncoder(files, config, threads)
    if kind == "static":
        return StaticTextEncoder(files, config)
    raise ValueError(f"{files.config}: unknown encoder kind {kind!r} (expected 'onnx' or 'static')")
