"""`llamantino vocab extend`: add target-language tokens to a model, with initialised embeddings.

The new tokens are real entries of the tokenizer's BPE model (vocabulary and merges), never
added-token strings matched before tokenization. They are learnt by continuing BPE on the
corpus as the old tokenizer sees it: every distinct word is split into its old tokens, then
the most frequent adjacent pair is merged, again and again, and each merge appended after
the existing ones. Old merges therefore run first and unchanged, every old token keeps its
id, the new ids follow the last id in use (after reserved special tokens), and text still
decodes to itself.

Two tokenizer families are handled:

* byte-level BPE (GPT-2, Llama 3, Qwen, the demo tokenizer): the learnt merges are appended;
* SentencePiece-style BPE with `▁` for spaces (LLaMA 2, Mistral): merges are added as
  transformers derives them from a SentencePiece model (every split of a piece into two
  pieces, ordered by the piece's id), and a `tokenizer.model` next to the tokenizer is
  updated through the SentencePiece protobuf so both files tokenize alike.

Anything else (WordPiece, Unigram, other BPE set-ups) is refused with one line naming it.

Each new embedding row (input, and output when untied) is the mean of the old rows of the
pieces the old tokenizer splits the new token into; old rows are not touched. The output
folder holds the model (safetensors, the input's dtype), the tokenizer, `vocab_report.json`
(tokens per word and bytes per token on held-out text before and after, per language, and
how many new tokens that text uses) and `manifest.json`, written last.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import json
import logging
import math
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError

log = logging.getLogger(__name__)

KIND = "vocab_extend"
REPORT = "vocab_report.json"
SENTENCEPIECE_FILE = "tokenizer.model"
BYTE_LEVEL = "byte-level BPE"
SENTENCEPIECE = "SentencePiece-style BPE"
SPACE = "▁"
# A SentencePiece-style word starts at each ▁, so no new token spans two words.
SPACE_WORDS = re.compile(f"{SPACE}[^{SPACE}]*|[^{SPACE}]+")
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclasses.dataclass
class Config:
    model: str = setting("", "model folder or hub name whose vocabulary is extended", path_input=True)
    data: list[str] = setting([], "corpus to learn the new tokens from: JSON lines, .txt (blank-line paragraphs), "
                                  "parquet, folders of these, or hub:NAME", path_input=True)
    text_field: str = setting("text", "field holding the text in JSON lines, parquet and hub records")
    add_tokens: int = setting(1000, "number of tokens to add", minimum=1, maximum=1_000_000)
    min_frequency: int = setting(2, "a new token must join two tokens found side by side at least this often",
                                 minimum=1)
    max_documents: int = setting(0, "learn from the first N documents of the corpus only (0: all)", minimum=0)
    eval_data: list[str] = setting([], "held-out text per language as NAME=PATH (e.g. it=heldout.txt), measured "
                                       "before and after", path_input=True)
    pad_to_multiple_of: int = setting(0, "round the embedding rows up to a multiple of this (0: off)",
                                      minimum=0, maximum=65536)
    output: str = setting("", "folder to save the extended model, tokenizer and vocab_report.json in")
    max_shard_size: str = setting("5GB", "largest safetensors file of the saved model")

    def validate(self, source):
        for name in ("model", "data", "output"):
            if not getattr(self, name):
                raise LlamantinoError(f"{source}: setting '{name}' is required")
        eval_sets(self.eval_data)


def eval_sets(entries) -> dict[str, list[str]]:
    """`NAME=PATH` entries -> {name: [paths]}."""
    sets: dict[str, list[str]] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise LlamantinoError(f"eval_data entry '{entry}': expected NAME=PATH, e.g. it=heldout.txt")
        sets.setdefault(name, []).append(path)
    return sets


def read_documents(sources, text_field: str = "text", limit: int = 0):
    """Each document of `sources` once, streamed (a DocumentStream cycles; stop at its second epoch)."""
    from llamantino.data.streaming import DocumentStream

    stream = DocumentStream(sources, text_field=text_field)
    for number, text in enumerate(stream):
        if stream.epoch > 0 or (limit and number >= limit):
            return
        yield text


# ---------------------------------------------------------------------------------------
# The tokenizer: which family, and how it splits text into words


def _parts(node: dict | None, key: str) -> list[dict]:
    """The components of a normalizer or pre-tokenizer, with Sequences flattened."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [part for sub in node.get(key, []) for part in _parts(sub, key)]
    return [node]


def tokenizer_family(state: dict, source: str) -> str:
    """BYTE_LEVEL or SENTENCEPIECE for a tokenizer.json this module can extend; else an error."""
    model = state.get("model") or {}
    kind = model.get("type") or "unknown"
    if kind != "BPE":
        raise LlamantinoError(f"{source}: tokenizer type {kind} is not supported; vocab extend handles BPE "
                              "tokenizers (byte-level, or SentencePiece-style with ▁)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise LlamantinoError(f"{source}: tokenizer type BPE with subword prefixes or suffixes is not supported")
    if not isinstance(model.get("vocab"), dict):
        raise LlamantinoError(f"{source}: tokenizer.json field model.vocab is not a mapping of tokens to ids")
    pre = [part.get("type") for part in _parts(state.get("pre_tokenizer"), "pretokenizers")]
    norms = _parts(state.get("normalizer"), "normalizers")
    if "ByteLevel" in pre:
        return BYTE_LEVEL
    if "Metaspace" in pre or any(n.get("type") == "Replace" and n.get("content") == SPACE for n in norms):
        return SENTENCEPIECE
    raise LlamantinoError(f"{source}: tokenizer type BPE with pre-tokenizer {'+'.join(pre) or 'none'} is not "
                          "supported; vocab extend handles byte-level and SentencePiece-style (▁) BPE")


def words_of(backend, family: str, text: str) -> list[str]:
    """`text` cut into words as the tokenizer's BPE model sees them (normalised, pre-tokenized)."""
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
    if family == SENTENCEPIECE:
        words = [piece for word in words for piece in SPACE_WORDS.findall(word)]
    return words


def count_words(backend, family: str, texts) -> tuple[Counter, int]:
    """Distinct words of the corpus with their frequencies, and the number of documents read."""
    counts: Counter = Counter()
    documents = 0
    for text in texts:
        if not text.strip():
            continue
        documents += 1
        counts.update(words_of(backend, family, text))
        if documents % 100_000 == 0:
            log.info("vocab: %d documents read, %d distinct words", documents, len(counts))
    return counts, documents


# ---------------------------------------------------------------------------------------
# Learning the new tokens: BPE continued from the old tokenization


def learn_merges(segmented: list[tuple[list[str], int]], *, n: int, min_frequency: int, taken: set,
                 frozen: set) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Up to `n` merges continuing BPE over words given as (old tokens, frequency).

    Each step merges the most frequent adjacent pair (ties: the smaller pair of strings)
    seen at least `min_frequency` times, whose tokens are not `frozen` (bytes of byte
    fallback, special tokens) and whose joined string is not already a token (`taken`).
    Returns the merges in order and the words as the merges leave them.
    """
    words = [list(word) for word, _ in segmented]
    freqs = [freq for _, freq in segmented]
    counts: dict = defaultdict(int)
    where: dict = defaultdict(set)
    for i, word in enumerate(words):
        for pair in zip(word, word[1:]):
            counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in counts.items() if count >= min_frequency]
    heapq.heapify(heap)
    taken = set(taken)
    merges: list[tuple[str, str]] = []
    while len(merges) < n and heap:
        stored, pair = heapq.heappop(heap)
        count = counts.get(pair, 0)
        if count != -stored:  # counts only fall once a pair exists: re-queue at its true count
            if count >= min_frequency:
                heapq.heappush(heap, (-count, pair))
            continue
        left, right = pair
        if left in frozen or right in frozen or left + right in taken:
            continue  # can never make a new token
        merges.append(pair)
        taken.add(left + right)
        for new_pair in _merge_everywhere(pair, words, freqs, counts, where):
            if counts[new_pair] >= min_frequency:
                heapq.heappush(heap, (-counts[new_pair], new_pair))
    return merges, words


def _merge_everywhere(pair, words, freqs, counts, where) -> set:
    """Apply one merge to every word holding the pair (left to right, as the BPE model
    does), updating pair counts; returns the pairs the merge created."""
    left, right = pair
    merged = left + right
    created = set()
    for i in where.pop(pair, ()):
        word = words[i]
        out, j = [], 0
        while j < len(word):
            if j + 1 < len(word) and word[j] == left and word[j + 1] == right:
                out.append(merged)
                j += 2
            else:
                out.append(word[j])
                j += 1
        if len(out) == len(word):
            continue
        for old in zip(word, word[1:]):
            counts[old] -= freqs[i]
        for new in zip(out, out[1:]):
            counts[new] += freqs[i]
            where[new].add(i)
            if merged in new:
                created.add(new)
        words[i] = out
    counts.pop(pair, None)
    return created


# ---------------------------------------------------------------------------------------
# The extended tokenizer


def _merge_pairs(merges) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def sentencepiece_merges(old_merges, vocab: dict, new_tokens: list[str]) -> list[tuple[str, str]]:
    """Merges for SentencePiece-style BPE, as transformers derives them from a SentencePiece
    model: every split of a piece into two pieces, ranked by the piece's id. Old merges stay
    in place; a split of an old piece that needs a new piece goes right after that piece's
    last merge (SentencePiece would use it at the old piece's rank); new pieces' splits follow."""
    new = set(new_tokens)

    def splits(token: str, through_new: bool) -> list[tuple[str, str]]:
        pairs = [(token[:k], token[k:]) for k in range(1, len(token))]
        return [(a, b) for a, b in pairs if a in vocab and b in vocab and (not through_new or a in new or b in new)]

    last = {a + b: i for i, (a, b) in enumerate(old_merges)}
    inserted: dict[int, list] = defaultdict(list)
    for token in vocab:
        if token not in new and token in last:
            inserted[last[token]].extend(splits(token, through_new=True))
    out: list[tuple[str, str]] = []
    for i, merge in enumerate(old_merges):
        out.append(merge)
        out.extend(inserted.get(i, ()))
    for token in new_tokens:
        out.extend(splits(token, through_new=False))
    return out


def extended_state(state: dict, family: str, new_tokens: list[str], learnt, first_id: int) -> dict:
    """tokenizer.json with the new tokens appended to the BPE vocabulary and merges.

    Added tokens (specials) are entered in the BPE vocabulary too, at their own ids: on
    loading, `tokenizers` numbers an added token the model does not know after the model's
    vocabulary, so Llama 3's reserved tokens would otherwise move up by the tokens added."""
    state = copy.deepcopy(state)
    model = state["model"]
    vocab = model["vocab"]
    for added in state.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    for k, token in enumerate(new_tokens):
        vocab[token] = first_id + k
    old = _merge_pairs(model.get("merges") or [])
    merges = sentencepiece_merges(old, vocab, new_tokens) if family == SENTENCEPIECE else old + list(learnt)
    as_strings = bool(model.get("merges")) and isinstance(model["merges"][0], str)
    model["merges"] = [" ".join(m) if as_strings else list(m) for m in merges]
    return state


def extended_sentencepiece_model(data: bytes, old_vocab: dict, new_tokens: list[str], first_id: int):
    """(bytes of the SentencePiece model with the new pieces appended, None), or (None, why
    it cannot be updated). New pieces score below every old one, in order, as BPE ranks."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        return None, f"unreadable SentencePiece model ({type(exc).__name__})"
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        return None, "not a BPE SentencePiece model"
    if len(proto.pieces) != first_id or any(old_vocab.get(p.piece) != i for i, p in enumerate(proto.pieces)):
        return None, "its pieces do not match the ids of tokenizer.json"
    normal = [p.score for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    low = min(normal) if normal else 0.0
    for k, token in enumerate(new_tokens):
        proto.pieces.add(piece=token, score=low - 1 - k, type=pb.ModelProto.SentencePiece.NORMAL)
    return proto.SerializeToString(), None


def _sentencepiece_source(model: str) -> bytes | None:
    path = Path(model) / SENTENCEPIECE_FILE
    if path.is_file():
        return path.read_bytes()
    if Path(model).exists():
        return None
    from transformers.utils import cached_file

    found = cached_file(model, SENTENCEPIECE_FILE, _raise_exceptions_for_missing_entries=False)
    return Path(found).read_bytes() if found else None


def save_tokenizer(folder: Path, tokenizer, state: dict, sentencepiece: bytes | None) -> None:
    """The tokenizer's own files with tokenizer.json (and the GPT-2 style vocab.json/merges.txt,
    and tokenizer.model, when written) carrying the extended vocabulary."""
    from tokenizers import Tokenizer

    tokenizer.save_pretrained(folder)
    backend = Tokenizer.from_str(json.dumps(state, ensure_ascii=False))  # checks the state loads
    (folder / "tokenizer.json").write_text(backend.to_str(pretty=True), encoding="utf-8")
    model = state["model"]
    if (folder / "vocab.json").is_file():
        (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    if (folder / "merges.txt").is_file():
        lines = [" ".join(m) for m in _merge_pairs(model["merges"])]
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    if sentencepiece is not None:
        (folder / SENTENCEPIECE_FILE).write_bytes(sentencepiece)


# ---------------------------------------------------------------------------------------
# Embeddings


def extend_embeddings(model, pieces: list[list[int]], first_id: int, old_tokens: int,
                      pad_to_multiple_of: int = 0) -> dict:
    """Give new token k (id first_id + k) the mean of the rows of its old `pieces[k]`, in the
    input embeddings and, when untied, the output ones. Rows of old tokens stay as they are.

    The matrix grows only when the new ids need it (a matrix already padded beyond the
    tokenizer lends its spare rows), then to a multiple of `pad_to_multiple_of` if set;
    rows that belong to no token get the mean of all old token rows."""
    import torch

    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    tied = outputs is None or outputs.weight.data_ptr() == inputs.weight.data_ptr()
    matrices = [inputs] if tied else [inputs, outputs]
    old_rows = inputs.weight.shape[0]
    end = first_id + len(pieces)
    rows = max(old_rows, end)
    if pad_to_multiple_of:
        rows = math.ceil(rows / pad_to_multiple_of) * pad_to_multiple_of
    means = [_row_means(m.weight, pieces, old_tokens) for m in matrices]
    if rows > old_rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
        inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
        matrices = [inputs] if tied else [inputs, outputs]
    with torch.no_grad():
        for matrix, (new_rows, spare_row) in zip(matrices, means):
            weight = matrix.weight
            weight[first_id:end] = new_rows.to(weight.dtype)
            if rows > max(old_rows, end):
                weight[max(old_rows, end):] = spare_row.to(weight.dtype)
    return {"embedding_rows_before": old_rows, "embedding_rows_after": rows, "tied_embeddings": tied}


def _row_means(weight, pieces: list[list[int]], old_tokens: int):
    """(mean rows of each new token's pieces, mean of all old token rows), in float32."""
    import torch

    old = weight.detach()
    rows = torch.stack([old[ids].float().mean(dim=0) for ids in pieces])
    return rows, old[:old_tokens].float().mean(dim=0)


# ---------------------------------------------------------------------------------------
# Measuring tokenizers on held-out text


def encode_all(tokenizer, texts: list[str], batch: int = 256) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(tokenizer(texts[i: i + batch], add_special_tokens=False)["input_ids"])
    return out


def tokenizer_figures(tokenizer, texts: list[str], encoded: list[list[int]]) -> dict:
    """Tokens per word (words: whitespace-separated), bytes per token, and exact round trips."""
    tokens = sum(len(ids) for ids in encoded)
    words = sum(len(text.split()) for text in texts)
    nbytes = sum(len(text.encode("utf-8")) for text in texts)
    exact = sum(tokenizer.decode(ids) == text for ids, text in zip(encoded, texts))
    return {"tokens": tokens, "tokens_per_word": round(tokens / max(words, 1), 4),
            "bytes_per_token": round(nbytes / max(tokens, 1), 4), "round_trip_exact": exact}


def compare_on(name: str, texts: list[str], old_tok, new_tok, new_ids: range) -> tuple[dict, set]:
    """Before/after figures on one held-out set, and the new ids it uses. A document the old
    tokenizer round-trips must round-trip after the extension too."""
    if not texts:
        raise LlamantinoError(f"eval_data {name}: no documents")
    old_ids, new_enc = encode_all(old_tok, texts), encode_all(new_tok, texts)
    for number, (text, before, after) in enumerate(zip(texts, old_ids, new_enc), start=1):
        if old_tok.decode(before) == text and new_tok.decode(after) != text:
            raise LlamantinoError(f"eval_data {name}: document {number} no longer decodes to itself after the "
                                  "extension; nothing written")
    occurrences = Counter(i for ids in new_enc for i in ids if i in new_ids)
    after = tokenizer_figures(new_tok, texts, new_enc)
    figures = {"documents": len(texts), "words": sum(len(t.split()) for t in texts),
               "bytes": sum(len(t.encode("utf-8")) for t in texts),
               "before": tokenizer_figures(old_tok, texts, old_ids), "after": after,
               "new_tokens_used": len(occurrences),
               "new_token_share": round(sum(occurrences.values()) / max(after["tokens"], 1), 4)}
    return figures, set(occurrences)


# ---------------------------------------------------------------------------------------
# The stage


def load_fast_tokenizer(model: str):
    """The tokenizer as saved, with its `tokenizers` backend (the vocabulary is extended there); unlike
    modeling.load_tokenizer, no pad token is chosen: the saved tokenizer changes only by the new tokens."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise LlamantinoError(f"{model}: cannot load the tokenizer ({str(exc).splitlines()[0]})") from None
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise LlamantinoError(f"{model}: tokenizer type {type(tokenizer).__name__} (no tokenizers backend) "
                              "is not supported")
    return tokenizer


def learn_tokens(cfg: Config, tokenizer, family: str) -> dict:
    """Read the corpus and learn `cfg.add_tokens` new tokens: their strings, merges, corpus figures."""
    backend = tokenizer.backend_tokenizer
    state = json.loads(backend.to_str())
    sources = ", ".join(cfg.data)
    counts, documents = count_words(backend, family, read_documents(cfg.data, cfg.text_field, cfg.max_documents))
    if not counts:
        raise LlamantinoError(f"{sources}: the corpus yields no text to learn tokens from")
    segmented = [([t.value for t in backend.model.tokenize(word)], freq) for word, freq in counts.items()]
    special = {t.content for t in tokenizer.added_tokens_decoder.values()}
    unk = state["model"].get("unk_token")
    frozen = special | ({unk} if unk else set())
    if state["model"].get("byte_fallback"):
        frozen |= {token for token in state["model"]["vocab"] if BYTE_PIECE.fullmatch(token)}
    taken = set(state["model"]["vocab"]) | special
    merges, words = learn_merges(segmented, n=cfg.add_tokens, min_frequency=cfg.min_frequency,
                                 taken=taken, frozen=frozen)
    if len(merges) < cfg.add_tokens:
        raise LlamantinoError(f"{sources}: the corpus supports only {len(merges)} new tokens at min_frequency "
                              f"{cfg.min_frequency} (asked for {cfg.add_tokens}); give more text or lower "
                              "--add-tokens or --min-frequency; nothing written")
    freqs = [freq for _, freq in segmented]
    corpus = {"documents": documents, "words": sum(freqs), "distinct_words": len(counts),
              "tokens_before": sum(len(w) * f for (w, _), f in zip(segmented, freqs)),
              "tokens_after_learnt": sum(len(w) * f for w, f in zip(words, freqs))}
    return {"state": state, "merges": merges, "tokens": [a + b for a, b in merges], "corpus": corpus}


def extend_vocabulary(folder: Path, cfg: Config) -> dict:
    """Do the work of the stage into the existing folder `folder`; returns the report."""
    from transformers import AutoTokenizer

    from llamantino.models.modeling import check_model_source

    t0 = time.time()
    source = check_model_source(cfg.model)
    tokenizer = load_fast_tokenizer(source)
    family = tokenizer_family(json.loads(tokenizer.backend_tokenizer.to_str()), source)
    first_id = max(tokenizer.get_vocab().values()) + 1
    check_embedding_rows(source, first_id)
    held_out = {name: list(read_documents(paths)) for name, paths in eval_sets(cfg.eval_data).items()}
    learnt = learn_tokens(cfg, tokenizer, family)
    new_tokens = learnt["tokens"]
    log.info("vocab: %d tokens learnt (%s), ids %d-%d", len(new_tokens), family, first_id,
             first_id + len(new_tokens) - 1)
    new_state = extended_state(learnt["state"], family, new_tokens, learnt["merges"], first_id)
    sentencepiece, note = _sentencepiece_update(source, family, tokenizer.get_vocab(), new_tokens, first_id)
    pieces = [[t.id for t in tokenizer.backend_tokenizer.model.tokenize(token)] for token in new_tokens]
    model_figures = save_model(folder, source, pieces, first_id, cfg)
    save_tokenizer(folder, tokenizer, new_state, sentencepiece)
    new_tok = AutoTokenizer.from_pretrained(folder)
    check_ids(tokenizer.get_vocab(), new_tok.get_vocab(), new_tokens, first_id, folder)
    evaluation, used = evaluate(held_out, tokenizer, new_tok, range(first_id, first_id + len(new_tokens)))
    return {
        "tokens_added": len(new_tokens), "tokenizer_family": family, "first_new_id": first_id,
        "vocab_size_before": len(tokenizer), "vocab_size_after": len(new_tok), **model_figures,
        "min_frequency": cfg.min_frequency, "corpus": learnt["corpus"], "eval": evaluation,
        "new_tokens_used": used, "sentencepiece_model": note, "seconds": round(time.time() - t0, 1),
        "new_tokens": [{"id": first_id + k, "token": token, "text": new_tok.convert_tokens_to_string([token]),
                        "init_from": pieces[k]} for k, token in enumerate(new_tokens)],
    }


def check_embedding_rows(source: str, first_id: int) -> None:
    from llamantino.models.modeling import load_config

    rows = getattr(load_config(source).get_text_config(), "vocab_size", None)
    if rows is not None and rows < first_id:
        raise LlamantinoError(f"{source}: the model has {rows} embedding rows but its tokenizer uses ids up to "
                              f"{first_id - 1}")


def save_model(folder: Path, source: str, pieces: list[list[int]], first_id: int, cfg: Config) -> dict:
    """Load the model in its own dtype, give it the new embedding rows, save it into `folder`."""
    from transformers import AutoModelForCausalLM

    from llamantino.models.modeling import check_model_source

    source = check_model_source(source)  # a local folder's weights must be safetensors
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto", use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise LlamantinoError(f"{source}: cannot load the model ({str(exc).splitlines()[0]})") from None
    figures = extend_embeddings(model, pieces, first_id, first_id, cfg.pad_to_multiple_of)
    model.save_pretrained(folder, max_shard_size=cfg.max_shard_size)
    return {**figures, "dtype": str(model.dtype).removeprefix("torch.")}


def evaluate(held_out: dict, old_tok, new_tok, new_ids: range) -> tuple[dict, int | None]:
    """Figures per held-out set, and how many distinct new tokens they use (None without sets)."""
    evaluation, used = {}, set()
    for name, texts in held_out.items():
        evaluation[name], seen = compare_on(name, texts, old_tok, new_tok, new_ids)
        used |= seen
    return evaluation, len(used) if held_out else None


def _sentencepiece_update(source, family, old_vocab, new_tokens, first_id) -> tuple[bytes | None, str]:
    """The updated tokenizer.model, or None, with a note for the report."""
    data = _sentencepiece_source(source)
    if data is None:
        return None, "absent"
    if family != SENTENCEPIECE:
        note = f"dropped: {SENTENCEPIECE_FILE} next to a {family} tokenizer"
    else:
        updated, why = extended_sentencepiece_model(data, old_vocab, new_tokens, first_id)
        if updated is not None:
            return updated, "updated"
        note = f"dropped: {why}"
    log.warning("vocab: %s: %s (tokenizer.json carries the extended tokenizer)", SENTENCEPIECE_FILE, note)
    return None, note


def check_ids(old: dict, new: dict, new_tokens: list[str], first_id: int, folder) -> None:
    """Every old token keeps its id and the new ones sit where they were put (a safety net)."""
    moved = [t for t, i in old.items() if new.get(t) != i]
    misplaced = [t for k, t in enumerate(new_tokens) if new.get(t) != first_id + k]
    if moved or misplaced:
        raise LlamantinoError(f"{folder}: the saved tokenizer moved {len(moved)} old and {len(misplaced)} new "
                              "token ids; nothing written")


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir, atomic_write_json
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True)
    if state == "complete":
        return {"status": "skipped (done)", **_summary(read_manifest(cfg.output)["metrics"])}
    with atomic_dir(cfg.output) as tmp:
        report = extend_vocabulary(tmp, cfg)
        atomic_write_json(tmp / REPORT, report)
        metrics = {k: v for k, v in report.items() if k != "new_tokens"}
        inputs = describe_inputs([cfg.model, *cfg.data, *[p for ps in eval_sets(cfg.eval_data).values() for p in ps]])
        write_manifest(tmp, KIND, cfg, inputs=inputs, metrics=metrics)
    return {"status": "done", **_summary(metrics)}


def _summary(metrics: dict) -> dict:
    headline = {"tokens_added": metrics["tokens_added"]}
    for name, figures in (metrics.get("eval") or {}).items():
        headline[f"{name}_tokens_per_word"] = (f"{figures['before']['tokens_per_word']:.3f} -> "
                                               f"{figures['after']['tokens_per_word']:.3f}")
    if metrics.get("new_tokens_used") is not None:
        headline["new_tokens_used"] = metrics["new_tokens_used"]
    return {"headline": headline, "metrics": metrics}
