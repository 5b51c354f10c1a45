"""`llamantino release`: package a trained run the way the paper published its models.

The LLaMA 2 licence forbids shipping the weights, so:

* an adapter run (`adapt`, `sft`, `prefer`) is released as its LoRA adapter and tokenizer;
* a full fine-tuning run (`instruct`) is released as an exact weight difference against
  the model it was tuned from (the run manifest's `settings.model`, or `--base`).

Next to them go a model card (README.md: metadata front-matter, the LLaMA 2 licence
note, how to rebuild, the prompt format with an example, training settings and figures
from the run's manifest) and SHA256SUMS, the sha256 of every released file in the format
`sha256sum -c` reads. `--push REPO` uploads exactly those files to the Hugging Face hub.

The card says how to serve the model: for an adapter vLLM can serve as a LoRA (no module
trained whole, no trained token rows, no DoRA or LoRA bias, a rank vLLM accepts), the exact
`vllm serve BASE --enable-lora --lora-modules NAME=PATH --max-lora-rank R` line; for any other,
one line saying why, and the merged model to serve instead. `--gguf TYPE` adds the model as a
GGUF file (`export gguf`, the adapter merged) with an Ollama Modelfile (`export ollama`), both
in SHA256SUMS, and the llama.cpp and Ollama lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import safe_join
from llamantino.core.fileio import HUB_PREFIX
from llamantino.release.build import CHECKSUMS
from llamantino.release.gguf import TYPES as GGUF_TYPES

log = logging.getLogger(__name__)

KIND = "release"
CARD = "README.md"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
# Prompt formats a model card names (a tokenizer's own template or a file is shown as chat-template).
CARD_PROMPT_FORMATS = ("llama2-chat", "alpaca-it", "alpaca", "chatml", "chat-template", "none")
STAGE_PROMPT = {"sft": "llama2-chat", "prefer": "llama2-chat", "instruct": "alpaca-it", "adapt": "none"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The values vLLM's --max-lora-rank accepts (vllm/config/lora.py, MaxLoRARanks; 1 only in recent
# releases, so a rank below 8 is served with 8, which every release accepts).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# Module names whose weights are the embeddings or the output layer.
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings", "output_layer")
# What the card says of the licence, by the base model's licence (the hub's identifiers).
LICENCE_NOTES = {
    "llama2": ("Derived from Llama 2: use is subject to the [Llama 2 Community License]"
               "(https://ai.meta.com/llama/license/) and Meta's Acceptable Use Policy."),
    "llama3": "Derived from Llama 3: use is subject to the Meta Llama 3 Community License and Acceptable Use Policy.",
    "llama3.1": "Derived from Llama 3.1: use is subject to the Llama 3.1 Community License and Acceptable Use Policy.",
    "llama3.2": "Derived from Llama 3.2: use is subject to the Llama 3.2 Community License and Acceptable Use Policy.",
    "gemma": "Derived from Gemma: use is subject to the Gemma Terms of Use and Prohibited Use Policy.",
    "apache-2.0": "Derived from `{base}`, released under the Apache License 2.0.",
    "mit": "Derived from `{base}`, released under the MIT License.",
}
LICENCE_WEIGHTS = ("This repository holds no weights of `{base}`, only {what}; rebuilding the model needs the "
                   "base weights from their publisher.")


@dataclasses.dataclass
class Config:
    run: str = setting("", "training run folder (adapt, sft, prefer or instruct)", path_input=True)
    output: str = setting("", "folder to write the release into")
    release_recipe: str = setting("", "recipe (name or YAML) whose release section describes the model: "
                                      "name, parent, datasets, prompt format, hub repository")
    name: str = setting("", "model name on the card (default: the recipe's name, else the run folder's)")
    base: str = setting("", "model folder the run was tuned from: an instruct run's difference is taken against "
                            "it, --gguf merges an adapter into it (default: the run manifest's settings.model)",
                        path_input=True)
    gguf: str = setting("", "also release the model as a GGUF file of this type (the adapter merged into "
                            "--base, default the run's model) with an Ollama Modelfile", choices=("", *GGUF_TYPES))
    base_model: str = setting("", "hub name of the parent model for the card (default: the recipe's "
                                  "parent, else the run's model)")
    datasets: list[str] = setting([], "datasets named on the card (default: the recipe's)")
    prompt_format: str = setting("", "prompt format shown on the card (default: the recipe's, else the run's)",
                                 choices=("",) + CARD_PROMPT_FORMATS)
    license: str = setting("", "licence on the card (default: the recipe's, else the base model's card, "
                               "else 'other')")
    language: list[str] = setting([], "languages on the card (default: the recipe's, else those of the "
                                      "training data, identified on a sample)")
    push: str = setting("", "hub repository to upload the release to (needs network and a token)",
                        fingerprint=False)
    private: bool = setting(False, "create the hub repository as private", fingerprint=False)

    def validate(self, source):
        for name in ("run", "output"):
            if not getattr(self, name):
                raise LlamantinoError(f"{source}: setting '{name}' is required")


@dataclasses.dataclass
class Card:
    """What the model card says, gathered from the run, its recipe and the settings."""

    name: str
    description: str
    released_as: str
    base_model: str
    datasets: list[str]
    language: list[str]
    license: str
    prompt_format: str
    example: str            # a prompt rendered in the model's format
    hub_repo: str
    chain: str
    stage: str
    settings: dict
    metrics: dict
    parent_adapter: str
    serving: list[str] = dataclasses.field(default_factory=list)  # the card's "Serving" section, markdown lines
    gguf: str = ""  # the GGUF file released with it, if any


# ---------------------------------------------------------------------------------------
# Reading the run


def _run_manifest(run: Path) -> dict:
    from llamantino.core.manifest import read_manifest

    if not run.is_dir():
        raise LlamantinoError(f"{run}: no such run folder")
    manifest = read_manifest(run)
    if manifest is None:
        raise LlamantinoError(f"{run}: no manifest.json: not a finished training run")
    return manifest


def _recipe_text(recipe: str) -> dict:
    from llamantino.core.recipes import _read_yaml, recipe_path

    raw = _read_yaml(recipe_path(recipe))  # the recipe loader's checks: no aliases, no key twice
    return raw if isinstance(raw, dict) else {}


def _public(value):
    """A setting or figure as a release shows it: a local path by its last component only
    (`TASK=PATH` keeps its TASK), in lists and mappings too; hub names, `hub:` specs and
    plain words as they are."""
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if not isinstance(value, str) or not value:
        return value
    head, sep, tail = value.partition("=")
    if sep and head and "/" not in head and _is_local_path(tail):
        return f"{head}={Path(tail).name}"
    return Path(value).name if _is_local_path(value) else value


def hub_id(model: str) -> str:
    """How a release names a model setting: a hub name as it is; a folder of the hub cache
    (`models--ORG--NAME/snapshots/REV`) as ORG/NAME; any other folder by its name only."""
    match = re.search(r"models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$", model)
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    return str(_public(model))


def _is_local_path(text: str) -> bool:
    """A path on this machine: absolute, relative with a marker (./, ../, ~), deeper than a
    hub id's one slash, or existing here. `owner/name` that exists nowhere here is a hub id."""
    if text.startswith(HUB_PREFIX) or "://" in text:
        return False
    return text.startswith(("/", "./", "../", "~", "\\")) or text.count("/") > 1 or Path(text).exists()


def gather(cfg: Config, manifest: dict, released_as: str) -> Card:
    from llamantino.core.recipes import list_recipes, read_release
    from llamantino.release.build import format_chain, release_chain

    settings, stage = manifest.get("settings", {}), manifest.get("stage", "")
    info = read_release(cfg.release_recipe) if cfg.release_recipe else None
    recipe = _recipe_text(cfg.release_recipe) if cfg.release_recipe else {}
    if info and info.released_as != released_as:
        raise LlamantinoError(f"recipe {cfg.release_recipe} releases the model as {info.released_as}, "
                              f"but run {cfg.run} holds {'an adapter' if released_as == 'adapter' else 'a full model'}")
    name = cfg.name or recipe.get("name") or Path(cfg.run).resolve().name
    base_model = cfg.base_model
    if not base_model and info:
        parent = read_release(info.parent) if info.parent in list_recipes() else None
        base_model = (parent.hub_repo or info.parent) if parent else info.parent
    if not base_model:
        base_model = hub_id(str(settings.get("model", "")))
    datasets = cfg.datasets or (info.datasets if info else []) or [
        d[len(HUB_PREFIX):].split("?")[0] for d in settings.get("data", []) if str(d).startswith(HUB_PREFIX)]
    metrics = manifest.get("metrics", {})
    prompt = cfg.prompt_format or (info.prompt_format if info and info.prompt_format not in ("", "auto") else "") \
        or run_prompt_format(stage, metrics)
    licence = cfg.license or (info.license if info else "") or base_licence(settings.get("model", "")) or "other"
    language = cfg.language or (info.language if info else []) or data_languages(settings.get("data", []))
    chain = ""  # shown with `llamantino build NAME`, which knows the bundled recipes
    if cfg.release_recipe in list_recipes() and info.hub_repo:
        chain = format_chain(*release_chain(cfg.release_recipe))
    return Card(name=name, description=str(recipe.get("description", "")), released_as=released_as,
                base_model=base_model, datasets=list(datasets), language=list(language), license=licence,
                prompt_format=prompt, example=prompt_example(prompt, Path(cfg.run)),
                hub_repo=(info.hub_repo if info else "") or cfg.push, chain=chain,
                stage=stage, settings={k: _public(v) for k, v in settings.items()},
                metrics=_public(manifest.get("metrics", {})), parent_adapter=str(_public(settings.get("adapter", ""))))


# ---------------------------------------------------------------------------------------
# Serving: vLLM, llama.cpp, Ollama


@dataclasses.dataclass
class VllmLora:
    servable: bool
    rank: int
    max_lora_rank: int  # the --max-lora-rank to serve it with (0 when no accepted value is large enough)
    reason: str          # why vLLM cannot serve it as a LoRA, one line ("" when it can)


def vllm_lora(adapter: Path) -> VllmLora:
    """Whether vLLM serves `adapter` as a LoRA: it loads LoRA factors of linear layers only
    ("vLLM only supports modules_to_save being None"; PEFT's target_parameters on fused experts
    are not linear layers), no DoRA, no LoRA bias, ranks up to its largest --max-lora-rank."""
    from safetensors import safe_open

    from llamantino.models.modeling import check_adapter

    config = check_adapter(adapter)
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    rank = max(int(r) for r in ranks if isinstance(r, (int, float)))
    reasons = []
    if config.get("peft_type") != "LORA":
        reasons.append(f"it is a {config.get('peft_type')} adapter, not LoRA")
    if config.get("modules_to_save"):
        reasons.append(f"it trains whole modules ({', '.join(map(str, config['modules_to_save']))}: modules_to_save)")
    if config.get("trainable_token_indices"):
        reasons.append("it trains rows of the embeddings (trainable_token_indices)")
    if config.get("use_dora"):
        reasons.append("it is a DoRA adapter")
    if config.get("lora_bias"):
        reasons.append("it trains LoRA biases (lora_bias)")
    if config.get("target_parameters"):  # PEFT's LoRA on fused 3-D expert weights, not on linear layers
        reasons.append(f"it adapts weights that are not linear layers ({', '.join(map(str, config['target_parameters']))}: "
                       "target_parameters, a mixture of experts' fused experts)")
    weights = safe_join(adapter, "adapter_model.safetensors", f"adapter {adapter}")
    if weights.is_file() and not reasons:  # what the config does not say, the weights do
        with safe_open(str(weights), framework="numpy") as handle:
            whole = [k for k in handle.keys() if ".lora_A." not in k and ".lora_B." not in k]
        if whole:
            reasons.append(f"its weights hold whole tensors besides the LoRA factors ({whole[0]})")
    max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), 0)
    if not max_rank:
        reasons.append(f"its rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_LORA_RANKS[-1]})")
    reason = "; ".join(reasons)
    return VllmLora(not reasons, rank, max_rank, reason and f"vLLM cannot serve this adapter as a LoRA: {reason}")


def serving_lines(card: Card, *, folder_name: str, check: VllmLora | None, gguf: dict | None) -> list[str]:
    """The card's "Serving" section: vLLM, and llama.cpp / Ollama when a GGUF file is included."""
    lines = []
    base = card.base_model
    if check is not None and check.servable:
        path = card.hub_repo or f"./{folder_name}"
        merged = (f" (`{base}` with `{card.parent_adapter}` merged into it: `llamantino merge`)"
                  if card.parent_adapter else "")
        lines += [f"With vLLM, as a LoRA on its base model{merged}:", "", "```",
                  f"vllm serve {base} --enable-lora --lora-modules {card.name}={path} "
                  f"--max-lora-rank {check.max_lora_rank}", "```", "",
                  f"Requests name the model `{card.name}`. The rank is {check.rank}; `--max-lora-rank` takes "
                  f"one of {', '.join(map(str, VLLM_LORA_RANKS))}.", ""]
    elif check is not None:
        lines += [check.reason + ". Serve the merged model instead:", "", "```",
                  "llamantino merge --base BASE --adapter THIS_FOLDER --output MERGED", "vllm serve MERGED", "```", ""]
    else:
        lines += ["With vLLM, the rebuilt model:", "", "```", "vllm serve MODEL_FOLDER", "```", ""]
    if gguf:
        name = gguf["name"]
        lines += [f"With llama.cpp or Ollama: `{gguf['gguf']}` is the model ({gguf['type']}"
                  + (", the adapter merged" if card.released_as == "adapter" else "")
                  + f") as one GGUF file with its chat template; `Modelfile` gives Ollama the same prompt format, "
                  "system prompt and stop tokens.", "", "```",
                  f"llama-cli -m {gguf['gguf']} -cnv", f"llama-server -m {gguf['gguf']} --jinja",
                  f"ollama create {name} -f Modelfile", f"ollama run {name}", "```", ""]
    return lines


# ---------------------------------------------------------------------------------------
# The model card


def run_prompt_format(stage: str, metrics: dict) -> str:
    """The format the run trained with, as its manifest records it (older runs: by stage)."""
    name = str(metrics.get("prompt_format") or "")
    if name in CARD_PROMPT_FORMATS:
        return name
    if name:  # the tokenizer's own template, or a template file
        return "chat-template"
    return STAGE_PROMPT.get(stage, "none")


def base_licence(model: str) -> str:
    """The `license:` of a local base model's card (README.md front matter), or ''."""
    import yaml

    path = Path(str(model)) / "README.md"
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return ""
    try:
        front = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return ""
    return str(front.get("license", "")) if isinstance(front, dict) else ""


def data_languages(data: list, documents: int = 200, share: float = 0.1) -> list[str]:
    """Languages of the local training data, identified on its first documents: those of at
    least `share` of them, most frequent first (hub datasets are not read)."""
    from collections import Counter

    from llamantino.data.langid import make_detector
    from llamantino.data.streaming import DocumentStream, expand_sources

    local = [str(d) for d in data if isinstance(d, str) and Path(d).exists()]
    if not local:
        return []
    try:
        stream = DocumentStream(expand_sources(local), text_field=None, cycle=False)
        texts = []
        for record in stream:
            texts.append(_record_text(record))
            if len(texts) >= documents:
                break
    except LlamantinoError:
        return []
    identify = make_detector()
    counts = Counter(identify.detect(t) for t in texts if t.strip())
    total = sum(counts.values())
    return [lang for lang, n in counts.most_common() if total and n / total >= share]


def _record_text(record) -> str:
    """The text of a document, a conversation or an instruction record, for identifying its language."""
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        return ""
    parts = [record.get(k) for k in ("text", "instruction", "context", "input", "response", "output", "prompt",
                                     "chosen")]
    turns = [t for k in ("messages", "data", "prompt", "chosen") if isinstance(record.get(k), list) for t in record[k]]
    for turn in turns:
        parts.append(turn.get("content") if isinstance(turn, dict) else turn)
    return " ".join(p for p in parts if isinstance(p, str))


def prompt_example(prompt_format: str, run: Path | None = None) -> str:
    from llamantino.data.prompts import render_alpaca_it, render_chat

    if prompt_format == "llama2-chat":
        return render_chat([{"role": "user", "content": "Qual è la capitale d'Italia?"}]).text
    if prompt_format == "alpaca-it":
        return render_alpaca_it("Riassumi il testo in una frase.",
                                "Il gatto dorme sul divano mentre fuori piove da tutto il giorno.").text
    if prompt_format in ("chat-template", "chatml") and run is not None:
        return _template_example(run)
    return ""


def _template_example(run: Path) -> str:
    """A first user turn rendered by the run's saved tokenizer, exactly as it trained."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(run))
        return tokenizer.apply_chat_template([{"role": "user", "content": "Qual è la capitale d'Italia?"}],
                                             tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001  (a card without an example is still a card)
        log.warning("%s: no prompt example for the card (%s)", run, exc)
        return ""


def _flat(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out.extend(_flat(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, object]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows]
    return "\n".join(lines)


def model_card(card: Card) -> str:
    import yaml

    adapter = card.released_as == "adapter"
    family = {"llama2": ["llama-2"], "llama3": ["llama-3"], "llama3.1": ["llama-3"], "llama3.2": ["llama-3"],
              "gemma": ["gemma"]}.get(card.license, [])
    tags = ["llamantino", *family, "text-generation"] + (["peft", "lora"] if adapter else ["weight-diff"])
    front = {"base_model": card.base_model, "license": card.license}
    if card.language:
        front["language"] = card.language
    hub_datasets = [d for d in card.datasets if HUB_ID.match(d)]  # the hub wants ids in the metadata
    if hub_datasets:
        front["datasets"] = hub_datasets
    front.update({"tags": tags, "pipeline_tag": "text-generation"})
    if adapter:
        front["library_name"] = "peft"
    repo = card.hub_repo or card.name
    parts = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {card.name}", ""]
    if card.description:
        parts += [card.description, ""]
    what = "a LoRA adapter" if adapter else "an exact weight difference (XOR of the raw bits)"
    parts += [f"This repository holds {what} for `{card.base_model}`, made with llamantino "
              "(the LLaMAntino pipeline: open language models adapted to a language).", ""]
    parts += ["## How to use", ""]
    if adapter:
        if card.parent_adapter:
            parts += [f"The adapter was trained on `{card.base_model}` with the adapter `{card.parent_adapter}` "
                      "merged into it: merge that first (`llamantino merge`), then load this one.", ""]
        parts += ["```python", "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{card.base_model}")',
                  f'model = PeftModel.from_pretrained(base, "{repo}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo}")', "```", "",
                  "To save a plain model: `llamantino merge --base BASE --adapter THIS_FOLDER --output MERGED`.", ""]
    else:
        parts += ["Rebuild the model, bit for bit, from the model it was tuned from:", "", "```",
                  "llamantino diff apply --base BASE_FOLDER --diff THIS_FOLDER --output MODEL_FOLDER", "```", "",
                  f"`BASE_FOLDER` holds `{card.base_model}` exactly as it was when the difference was made. "
                  "Every rebuilt tensor is checked against its sha256 (a wrong base cannot give the right result); "
                  "a wrong base is refused, naming the tensors that differ. `weight_diff.json` lists each "
                  "tensor with its shape, dtype and checksums. Memory stays at a few 4 MiB chunks per thread, "
                  "whatever the size of the model.", ""]
    if card.chain:
        parts += ["The whole chain, from Meta's weights:", "", "```",
                  f"llamantino build {card.name} --base-dir MODELS --output {card.name}", "```", "",
                  f"Chain: `{card.chain}`. Inputs are read from `MODELS/<hub name>` "
                  "(`--download` fetches the missing ones).", ""]
    if card.serving:
        parts += ["## Serving", "", *card.serving]
    parts += ["## Prompt format", ""]
    example = card.example
    if card.prompt_format == "llama2-chat":
        parts += ["LLaMA 2 chat format with the Italian system prompt. Example prompt:", ""]
    elif card.prompt_format == "alpaca-it":
        parts += ["Italian Alpaca prompt (without an input, the `### Input:` block is left out). "
                  "Example prompt:", ""]
    elif card.prompt_format in ("chat-template", "chatml"):
        parts += ["The chat template saved with the tokenizer (`tokenizer.apply_chat_template` renders the "
                  "training format exactly). Example prompt:", ""]
    elif card.prompt_format == "alpaca":
        parts += ["English Alpaca prompt.", ""]
    else:
        parts += ["None: a language model continuing plain text.", ""]
    if example:
        parts += ["```", example, "```", ""]
    parts += ["## Training", "", f"Stage `{card.stage}`; datasets: {', '.join(card.datasets) or 'see the settings'}.",
              "", _table(_flat(card.settings), ("setting", "value")), ""]
    if card.metrics:
        parts += ["## Evaluation and training figures", "", _table(_flat(card.metrics), ("figure", "value")), ""]
    note = LICENCE_NOTES.get(card.license, "Derived from `{base}`: use is subject to its licence.")
    weights = LICENCE_WEIGHTS.format(base=card.base_model, what=what)
    if card.gguf:
        weights = (f"`{card.gguf}` holds the whole model's weights, derived from `{card.base_model}`: publish it "
                   "only where that licence allows redistributing them.")
    parts += ["## Licence", "", note.format(base=card.base_model) + " " + weights, "", "## Files", "",
              f"`{CHECKSUMS}` holds the sha256 of every file here: check a download with `sha256sum -c {CHECKSUMS}`.",
              ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# Writing and pushing


def write_checksums(folder: Path) -> list[str]:
    """SHA256SUMS over every file of the release (the stage's own records excepted)."""
    from llamantino.core.fileio import sha256_file
    from llamantino.core.manifest import MANIFEST, RUN_INFO

    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.name not in (CHECKSUMS, MANIFEST, RUN_INFO) and not p.name.startswith("."))
    (folder / CHECKSUMS).write_text("".join(f"{sha256_file(folder / n)}  {n}\n" for n in names), encoding="utf-8")
    return names


def release_into(folder: Path, cfg: Config) -> dict:
    from llamantino.release.weightdiff import make_into

    run = Path(cfg.run)
    manifest = _run_manifest(run)
    if (run / "adapter_config.json").is_file():
        released_as = "adapter"
        card = gather(cfg, manifest, released_as)
        if not (run / "adapter_model.safetensors").is_file():
            raise LlamantinoError(f"{run}: no adapter_model.safetensors (release adapters as safetensors)")
        for name in ADAPTER_FILES + TOKENIZER_FILES:
            source = safe_join(run, name, f"run {run}")  # a link leading out would publish that file
            if source.is_file():
                shutil.copyfile(source, folder / name)
        public_adapter_config(folder / "adapter_config.json", card.base_model)
        base = ""
        check = vllm_lora(run)
        if not check.servable:
            log.warning("%s", check.reason)
    elif (run / "config.json").is_file():
        released_as = "weight-diff"
        card = gather(cfg, manifest, released_as)
        base = cfg.base or manifest.get("settings", {}).get("model", "")
        if not base or not Path(base).is_dir():
            raise LlamantinoError(f"{run}: the model it was tuned from ({base or 'unknown'}) is not a local "
                                  "folder; pass --base FOLDER")
        make_into(base, run, folder, base_name=card.base_model)
        check = None
    else:
        raise LlamantinoError(f"{run}: holds neither an adapter (adapter_config.json) nor a model (config.json)")
    gguf = release_gguf(folder, cfg, card, manifest) if cfg.gguf else None
    card.serving = serving_lines(card, folder_name=Path(cfg.output).name, check=check, gguf=gguf)
    card.gguf = gguf["gguf"] if gguf else ""
    (folder / CARD).write_text(model_card(card), encoding="utf-8")
    files = write_checksums(folder)
    vllm = {"vllm_lora": check.servable, "max_lora_rank": check.max_lora_rank, "vllm_reason": check.reason} \
        if check else {}
    return {"released_as": released_as, "name": card.name, "base_model": card.base_model, "base": str(base),
            "files": files, "bytes": sum((folder / f).stat().st_size for f in files),
            "prompt_format": card.prompt_format, **vllm, **({"gguf": gguf} if gguf else {})}


def release_gguf(folder: Path, cfg: Config, card: Card, manifest: dict) -> dict:
    """The model as NAME.gguf (an adapter merged into the model it was trained on) and its
    Modelfile (`export ollama`), in the release folder."""
    from llamantino.release.ollama import ollama_name, write_files

    run, settings = Path(cfg.run), manifest.get("settings", {})
    if card.released_as == "adapter":
        model = cfg.base or str(settings.get("model", ""))
        if not cfg.base and settings.get("adapter"):
            raise LlamantinoError(f"{run}: trained on {model} with the adapter {settings['adapter']} merged into it; "
                                  "--gguf needs that merged model: pass --base MERGED_FOLDER (llamantino merge)")
        if not model or not Path(model).is_dir():
            raise LlamantinoError(f"{run}: the model the adapter was trained on ({model or 'unknown'}) is not a local "
                                  "folder; pass --base FOLDER for --gguf")
        adapter = str(run)
    else:
        model, adapter = str(run), None
    return write_files(folder, model, adapter, name=ollama_name(card.name), type=cfg.gguf)


def public_adapter_config(path: Path, base_model: str) -> None:
    """The released adapter_config.json names its base by the card's hub id, not by the
    local folder PEFT recorded when the adapter was trained."""
    from llamantino.core.fileio import read_json_object

    config = read_json_object(path, "adapter config")
    config["base_model_name_or_path"] = base_model
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")  # as PEFT writes it


def _hub_api():
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise LlamantinoError("--push needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")
    return HfApi()


def push_release(folder, repo_id: str, *, private: bool = False, api=None) -> str:
    """Upload the files listed in SHA256SUMS (after checking them) and SHA256SUMS itself."""
    import glob

    from llamantino.release.build import read_checksums, verify_checksums

    folder = Path(folder)
    if not safe_join(folder, CHECKSUMS, f"release {folder}").is_file():
        raise LlamantinoError(f"{folder}: no {CHECKSUMS}: not a release folder")
    verify_checksums(folder)
    # the hub reads these as patterns: a file name is matched literally, never as a wildcard
    files = [glob.escape(name) for name in read_checksums(folder)] + [CHECKSUMS]
    api = api or _hub_api()
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   allow_patterns=files, commit_message=f"Release {folder.name} (llamantino)")
    except Exception as exc:  # network or hub refusal: one line for the user
        raise LlamantinoError(f"push to {repo_id} failed: {type(exc).__name__}: {exc}".replace("\n", " ")) from None
    return str(getattr(commit, "commit_url", commit))


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True)
    if state == "complete":
        metrics, status = read_manifest(cfg.output)["metrics"], "skipped (done)"
    else:
        with atomic_dir(cfg.output) as tmp:
            metrics = release_into(tmp, cfg)
            write_manifest(tmp, KIND, cfg, inputs=describe_inputs([cfg.run]), metrics=metrics)
        status = "done"
    summary = {"status": status, "headline": {"released_as": metrics["released_as"], "files": len(metrics["files"]),
                                              "MB": round(metrics["bytes"] / 1e6, 1)}, "metrics": metrics}
    if cfg.push:
        summary["pushed"] = push_release(cfg.output, cfg.push, private=cfg.private)
    return summary


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    # SUPPRESS: without one, the run folder comes from --recipe or --set
    add_stage_arguments(parser, KIND, positional={"run": {"nargs": "?", "default": argparse.SUPPRESS,
                                                          "help": "training run folder"}})


def main(args) -> int:
    from llamantino.core.runner import run_stage_command

    return run_stage_command(KIND, args, positional=("run",))
