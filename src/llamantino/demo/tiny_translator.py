"""A stand-in translation model that the tests and the demo build offline in seconds.

It is the same kind of model Argos Translate ships (a MarianMT transformer run by
CTranslate2, with a SentencePiece vocabulary), at toy size:

* a SentencePiece model learnt on the bundled English and Italian demo text, with
  `</s>` and `<unk>` first and `<pad>` appended last (the CTranslate2 converter drops the
  last embedding row, so `<pad>` must be last);
* a randomly initialised MarianMT trained a few hundred steps on a few dozen sentence
  pairs, enough to learn to emit `</s>` (a purely random model never stops). The pairs are
  not translations of each other: ITS OUTPUT IS ITALIAN-LOOKING NONSENSE;
* converted with `ctranslate2.converters.TransformersConverter`;
* a MiniSBD sentence splitter: argostranslate 1.11 splits sentences with a MiniSBD ONNX
  model and downloads one at run time unless the package carries `minisbd/*.onnx`. We
  write a tiny one by hand (one rule: a sentence ends at . ! ? or … followed by a space or
  the end of the text), so nothing is ever downloaded.

The output folder holds the model three ways:

    hf/                              MarianMT + MarianTokenizer (transformers)
    ct2/                             CTranslate2 folder: model.bin, sentencepiece.model,
                                     minisbd/<src>.onnx, model_info.json
    translate-<src>_<tgt>-stand_in.argosmodel
                                     the same as an Argos package (zip of metadata.json,
                                     model/, sentencepiece.model, minisbd/)

Everything it writes says it is a stand-in (`stand_in: true`).

The same builder makes the translation benchmark's stand-in at the size of a real Argos or
opus-mt model (d_model 512, 6+6 layers, feed-forward 2048, 8 heads, a vocabulary padded to
32,000 entries: 61M parameters). Training all of it on a CPU would take hours, so
`train_layers: 1` trains only the top decoder layer, enough to end outputs at a length like
a translation's; the other layers keep random weights, which cost the same to run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import re
import shutil
import time
import zipfile
from pathlib import Path

from llamantino.core.config import build_config, setting
from llamantino.core.errors import LlamantinoError
from llamantino.models.loss import IGNORE

log = logging.getLogger(__name__)

KIND = "tiny_translator"
DATA_DIR = Path(__file__).parents[1] / "assets" / "demo"
LANGUAGE_NAMES = {"en": "English", "it": "Italian", "de": "German", "fr": "French", "es": "Spanish"}
STAND_IN_NOTE = ("Stand-in model built by llamantino for tests and the demo: a tiny randomly initialised "
                 "MarianMT trained briefly on unrelated sentence pairs. Its output is nonsense.")


@dataclasses.dataclass
class Config:
    output: str = setting("", "folder to write the stand-in model in")
    src: str = setting("en", "source language code")
    tgt: str = setting("it", "target language code")
    src_text: list[str] = setting([str(DATA_DIR / "en_train.txt")], "source-language text files", path_input=True)
    tgt_text: list[str] = setting([str(DATA_DIR / "it_train.txt")], "target-language text files", path_input=True)
    vocab_size: int = setting(1000, "SentencePiece vocabulary size (before <pad>)", minimum=100, maximum=100_000)
    model_vocab: int = setting(0, "pad the model's vocabulary to this many entries with pieces the tokenizer "
                                  "never produces, so the output layer costs what a real model's does "
                                  "(0: the SentencePiece vocabulary only)", minimum=0, maximum=1_000_000)
    d_model: int = setting(64, "model width", minimum=8, maximum=8192)
    layers: int = setting(1, "encoder and decoder layers", minimum=1, maximum=64)
    heads: int = setting(4, "attention heads (d_model must be a multiple)", minimum=1, maximum=128)
    ffn_dim: int = setting(0, "feed-forward width; 0: twice d_model", minimum=0, maximum=65_536)
    pairs: int = setting(64, "sentence pairs to train on", minimum=8, maximum=100_000)
    steps: int = setting(300, "optimizer steps (enough to learn to stop)", minimum=1, maximum=1_000_000)
    batch_size: int = setting(16, "pairs per step", minimum=1, maximum=4096)
    learning_rate: float = setting(1e-2, "AdamW learning rate", minimum=1e-7, maximum=1.0)
    train_layers: int = setting(0, "train only the top N decoder layers, the rest keeping their random "
                                   "initialisation (0: train everything); a Transformer-base-sized stand-in "
                                   "then learns to stop in minutes on a CPU instead of hours", minimum=0, maximum=64)
    seed: int = setting(0, "random seed", minimum=0, maximum=2**32 - 1)
    threads: int = setting(1, "torch CPU threads for training (0: torch's default)", fingerprint=False,
                           minimum=0, maximum=1024)

    def validate(self, source):
        if not self.output:
            raise LlamantinoError(f"{source}: setting 'output' is required")
        if self.src == self.tgt:
            raise LlamantinoError(f"{source}: src and tgt are both '{self.src}'")
        if self.d_model % self.heads:
            raise LlamantinoError(f"{source}: setting 'd_model' ({self.d_model}) must be a multiple of 'heads' "
                                  f"({self.heads})")
        if self.train_layers > self.layers:
            raise LlamantinoError(f"{source}: setting 'train_layers' ({self.train_layers}) is more than 'layers' "
                                  f"({self.layers})")
        if self.model_vocab and self.model_vocab <= self.vocab_size:
            raise LlamantinoError(f"{source}: setting 'model_vocab' ({self.model_vocab}) must be 0 or more than "
                                  f"'vocab_size' ({self.vocab_size})")


def paths(output) -> dict:
    """Where a built stand-in keeps each form of the model."""
    output = Path(output)
    found = sorted(output.glob("*.argosmodel"))
    return {"hf": output / "hf", "ct2": output / "ct2", "argosmodel": found[0] if found else None}


def build_tiny_translator(output_dir, src: str = "en", tgt: str = "it", *, overwrite: bool = False,
                          **settings) -> dict:
    """Build the stand-in (or find it already built with the same settings); return its paths."""
    cfg = build_config(Config, {"output": str(output_dir), "src": src, "tgt": tgt, **settings},
                       "tiny translator settings")
    run(cfg, overwrite=overwrite)
    return paths(output_dir)


# ---------------------------------------------------------------------------------------
# The pieces


def read_sentences(files) -> list[str]:
    from llamantino.data.records import iter_documents

    out = []
    for _, text in iter_documents(files):
        out.extend(s for s in re.split(r"(?<=[.!?…])\s+", text) if s.strip())
    return out


def train_sentencepiece(sentences: list[str], vocab_size: int) -> bytes:
    """Unigram model with Marian's special ids: </s> = 0, <unk> = 1, no <s> or <pad>."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, normalization_rule_name="identity", eos_id=0, unk_id=1, bos_id=-1, pad_id=-1,
        num_threads=1, minloglevel=2)
    return buf.getvalue()


def model_vocabulary(sp, cfg: Config) -> list[str]:
    """The model's pieces: SentencePiece's, then `<unused-N>` fillers up to `model_vocab`, then
    `<pad>` last (the CTranslate2 converter drops the last embedding row)."""
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    pieces += [f"<unused-{i}>" for i in range(max(0, cfg.model_vocab - 1 - len(pieces)))]
    return pieces + ["<pad>"]


def train_marian(sp_model: bytes, pairs: list[tuple[str, str]], cfg: Config):
    """A randomly initialised MarianMT trained on `pairs` until it has learnt to end its output."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel

    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    pad = len(model_vocabulary(sp, cfg)) - 1
    ffn = cfg.ffn_dim or 2 * cfg.d_model
    config = MarianConfig(
        vocab_size=pad + 1, d_model=cfg.d_model, encoder_layers=cfg.layers, decoder_layers=cfg.layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads, encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn, max_position_embeddings=512,  # CTranslate2 decodes up to 256
        pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0,
        activation_function="swish", scale_embedding=True, share_encoder_decoder_embeddings=True)
    torch.manual_seed(cfg.seed)
    model = MarianMTModel(config)
    trained = list(model.parameters())
    if cfg.train_layers:
        # Only the top decoder layers learn; the others keep their random weights (and cost).
        model.requires_grad_(False)
        top = model.model.decoder.layers[-cfg.train_layers:]
        top.requires_grad_(True)
        trained = list(top.parameters())
    # Sources without </s>: Argos feeds the package's SentencePiece pieces as they are.
    data = [(sp.encode(a), sp.encode(b) + [0]) for a, b in pairs]
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(trained, lr=cfg.learning_rate)
    model.train()
    loss = None
    for step in range(cfg.steps):
        batch = rng.sample(data, min(cfg.batch_size, len(data)))
        s_len = max(len(s) for s, _ in batch)
        t_len = max(len(t) for _, t in batch)
        ids = torch.tensor([s + [pad] * (s_len - len(s)) for s, _ in batch])
        labels = torch.tensor([t + [IGNORE] * (t_len - len(t)) for _, t in batch])
        loss = model(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("stand-in translator step %d/%d loss %.3f", step + 1, cfg.steps, loss.item())
    model.eval()
    return model, float(loss.item())


def save_marian(model, sp_model: bytes, folder: Path, cfg: Config) -> None:
    """save_pretrained plus a MarianTokenizer, so the converter (and transformers) can load it."""
    import sentencepiece as spm
    from transformers import MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    vocab = {piece: i for i, piece in enumerate(model_vocabulary(sp, cfg))}
    spm_path = folder / "sentencepiece.model"
    spm_path.write_bytes(sp_model)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(source_spm=str(spm_path), target_spm=str(spm_path), vocab=str(folder / "vocab.json"),
                                source_lang=cfg.src, target_lang=cfg.tgt, model_max_length=512)
    spm_path.unlink()
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)


# ---------------------------------------------------------------------------------------
# A MiniSBD sentence splitter written by hand
#
# MiniSBD (what argostranslate 1.11 splits sentences with) loads an ONNX model with
# onnxruntime and reads from its metadata: `config` (JSON: feat_funcs, batch_size, ...),
# `vocab` (JSON: the character vocabulary, <PAD> = 0, <UNK> = 1) and `lexicon`. It feeds
# `units` (int64 [batch, chars]) and `features` (float [batch, chars, features]) and takes
# the argmax over 5 classes per character: 0 inside a token, 1 end of token, 2 end of
# sentence (3, 4: multi-word tokens). The model below is two table look-ups: scores of the
# character itself plus scores of the character after it. The ONNX protobuf is small
# enough to write directly (field numbers from onnx.proto), so no `onnx` package is needed.

SBD_UNITS = ["<PAD>", "<UNK>", " ", ".", "!", "?", "…"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _message(*fields) -> bytes:
    """Protobuf encoding of (field number, value): ints as varints, str/bytes length-delimited."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, int):
            out += _varint(number << 3) + _varint(value)
        else:
            value = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
    return bytes(out)


_FLOAT, _INT64 = 1, 7  # onnx TensorProto.DataType


def _tensor(name: str, array) -> bytes:
    dtype = {"float32": _FLOAT, "int64": _INT64}[str(array.dtype)]
    return _message(*[(1, d) for d in array.shape], (2, dtype), (8, name), (9, array.tobytes()))


def _value_info(name: str, elem_type: int, dims) -> bytes:
    shape = _message(*[(1, _message((2, d) if isinstance(d, str) else (1, d))) for d in dims])
    return _message((1, name), (2, _message((1, _message((1, elem_type), (2, shape))))))


def _node(op: str, inputs, outputs, **int_attributes) -> bytes:
    fields = [(1, i) for i in inputs] + [(2, o) for o in outputs] + [(4, op)]
    fields += [(5, _message((1, k), (3, v), (20, 2))) for k, v in int_attributes.items()]  # 2: INT
    return _message(*fields)


def rule_splitter_onnx(lang: str) -> bytes:
    """A MiniSBD model: a sentence ends at . ! ? … followed by a space or the end of the text."""
    import numpy as np

    index = {u: i for i, u in enumerate(SBD_UNITS)}
    current = np.zeros((len(SBD_UNITS), 5), np.float32)
    following = np.zeros((len(SBD_UNITS), 5), np.float32)
    current[:, 0] = 1.6                       # inside a token unless something below wins
    for mark in ".!?…":
        current[index[mark], 2] = 1.5
    for gap in ("<PAD>", " "):                # next character is a space or the end
        following[index[gap], 1] = 2.0        # -> end of token (2.0 > 1.6)
        following[index[gap], 2] = 1.5        # -> end of sentence after a mark (3.0 > 2.0)
    nodes = [
        _node("Gather", ["current_table", "units"], ["current_scores"], axis=0),
        _node("Slice", ["units", "one", "last", "one"], ["after_first"]),
        _node("Slice", ["units", "zero", "one", "one"], ["first"]),
        _node("Mul", ["first", "zero"], ["pad_column"]),  # <PAD> is id 0
        _node("Concat", ["after_first", "pad_column"], ["next_units"], axis=1),
        _node("Gather", ["following_table", "next_units"], ["following_scores"], axis=0),
        _node("Add", ["current_scores", "following_scores"], ["logits"]),
    ]
    initializers = [_tensor("current_table", current), _tensor("following_table", following),
                    _tensor("zero", np.array([0], np.int64)), _tensor("one", np.array([1], np.int64)),
                    _tensor("last", np.array([2 ** 62], np.int64))]
    graph = _message(*[(1, n) for n in nodes], (2, "rule_sentence_splitter"), *[(5, t) for t in initializers],
                     (11, _value_info("units", _INT64, ["batch", "chars"])),
                     (11, _value_info("features", _FLOAT, ["batch", "chars", "features"])),
                     (12, _value_info("logits", _FLOAT, ["batch", "chars", 5])))
    vocab = {"lang": lang, "idx": 0, "cutoff": 0, "lower": False,
             "_id2unit": SBD_UNITS, "_unit2id": index}
    config = {"skip_newline": False, "max_seqlen": 1000, "no_ssplit": False, "batch_size": 32,
              "feat_funcs": [], "use_dictionary": False, "num_dict_feat": 0}
    metadata = {"lang_code": lang, "config": json.dumps(config), "vocab": json.dumps(vocab), "lexicon": "null"}
    # ModelProto: ir_version 8, producer, graph, opset 13, metadata_props
    return _message((1, 8), (2, "llamantino"), (7, graph), (8, _message((1, ""), (2, 13))),
                    *[(14, _message((1, k), (2, v))) for k, v in metadata.items()])


# ---------------------------------------------------------------------------------------
# The stage


def package_metadata(cfg: Config) -> dict:
    return {
        "package_version": "0.1", "argos_version": "1.11", "type": "translate",
        "from_code": cfg.src, "from_name": LANGUAGE_NAMES.get(cfg.src, cfg.src),
        "to_code": cfg.tgt, "to_name": LANGUAGE_NAMES.get(cfg.tgt, cfg.tgt),
        "stand_in": True, "description": STAND_IN_NOTE,
    }


def write_argosmodel(path: Path, ct2_dir: Path, sp_model: bytes, splitter: bytes, cfg: Config) -> None:
    """An Argos package: a zip of one folder holding metadata.json, model/, sentencepiece.model, minisbd/."""
    root = f"translate-{cfg.src}_{cfg.tgt}-stand_in"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{root}/metadata.json", json.dumps(package_metadata(cfg), indent=2))
        zf.writestr(f"{root}/README.md", f"# {root}\n\n{STAND_IN_NOTE}\n")
        for name in ("model.bin", "config.json", "shared_vocabulary.json"):
            zf.write(ct2_dir / name, f"{root}/model/{name}")
        zf.writestr(f"{root}/sentencepiece.model", sp_model)
        zf.writestr(f"{root}/minisbd/{cfg.src}.onnx", splitter)


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite)
    if state == "complete":
        return {"status": "skipped (done)", **_summary(read_manifest(cfg.output)["metrics"])}
    import ctranslate2
    import torch

    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    src_sentences, tgt_sentences = read_sentences(cfg.src_text), read_sentences(cfg.tgt_text)
    sp_model = train_sentencepiece(src_sentences + tgt_sentences, cfg.vocab_size)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    short = lambda sentences: [s for s in sentences if len(sp.encode(s)) <= 32]  # noqa: E731
    pairs = list(zip(short(src_sentences), short(tgt_sentences)))[: cfg.pairs]
    if len(pairs) < 8:
        raise LlamantinoError(f"stand-in translator: only {len(pairs)} short sentence pairs in "
                              f"{', '.join(cfg.src_text + cfg.tgt_text)}; need at least 8")
    model, final_loss = train_marian(sp_model, pairs, cfg)
    splitter = rule_splitter_onnx(cfg.src)
    info = {"from_code": cfg.src, "to_code": cfg.tgt, "stand_in": True, "description": STAND_IN_NOTE}
    with atomic_dir(cfg.output) as tmp:
        hf_dir, ct2_dir = tmp / "hf", tmp / "ct2"
        save_marian(model, sp_model, hf_dir, cfg)
        (hf_dir / "model_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(ct2_dir))
        (ct2_dir / "sentencepiece.model").write_bytes(sp_model)
        (ct2_dir / "minisbd").mkdir()
        (ct2_dir / "minisbd" / f"{cfg.src}.onnx").write_bytes(splitter)
        shutil.copy(hf_dir / "model_info.json", ct2_dir / "model_info.json")
        write_argosmodel(tmp / f"translate-{cfg.src}_{cfg.tgt}-stand_in.argosmodel", ct2_dir, sp_model, splitter, cfg)
        metrics = {"parameters": sum(p.numel() for p in model.parameters()),
                   "vocab_size": model.config.vocab_size,
                   "pairs": len(pairs), "final_loss": round(final_loss, 4), "seconds": round(time.time() - t0, 1)}
        write_manifest(tmp, KIND, cfg, inputs=describe_inputs(cfg.src_text + cfg.tgt_text), metrics=metrics,
                       extra={"stand_in": True, "note": STAND_IN_NOTE})
    log.info("stand-in translator built in %.1f s: %s", time.time() - t0, cfg.output)
    return {"status": "done", **_summary(metrics)}


def _summary(metrics: dict) -> dict:
    return {"headline": {"params_K": round(metrics["parameters"] / 1e3, 1), "train_loss": metrics["final_loss"],
                         "stand_in": True}, "metrics": metrics}
