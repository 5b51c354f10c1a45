"""Tiny random models of today's families, each with its family's real chat template and special tokens.

Built offline from the transformers config classes and a small byte-level BPE tokenizer (as
`demo_base.build_tokenizer`), saved with `save_pretrained`, so every stage loads them exactly as it
would load the real checkpoints. What each one carries, after its family:

* llama3: GQA, tied embeddings, llama3 rope scaling; the Llama 3.1 Instruct tokenizer (BOS
  <|begin_of_text|>, EOS <|eot_id|>, <|end_of_text|> between documents, <|finetune_right_pad_id|>),
  the Llama 3.1 template (system block with the knowledge-cutoff preamble, BOS once).
* mistral: a sliding window shorter than the test documents; Mistral-7B-Instruct-v0.1's tokenizer
  (<s>, </s>, <unk>, no pad) and template (no system role).
* qwen2 / qwen3: no BOS; <|endoftext|> ends documents and was the pad; <|im_end|> ends turns; the
  Qwen2.5 template (its own default system prompt) and the Qwen3 one (empty think block on the last
  answer).
* gemma2: final-logit and attention soft-capping, alternating sliding / full layers; <bos>, <eos>,
  <pad>, <start_of_turn>, <end_of_turn>; the Gemma 2 template (refuses a system message).
* gemma3: Gemma 3 text (sliding / full layers, no soft-capping); the Gemma 3 template (folds the
  system message into the first user turn).
* phi3: fused qkv_proj / gate_up_proj, a sliding window; <|endoftext|> as EOS and pad, <|end|> ends
  turns (special tokens that swallow the whitespace after them), BOS <s> that the tokenizer does not add.

Each family also has a copy of its template with `{% generation %}` around what the model must
produce after the generation prompt, for transformers' own assistant mask; it renders the same text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog. A small model learns from a little text.",
    "Il gatto dorme sul divano mentre la pioggia cade sulla città. Domani andremo al mare.",
    "El gato duerme en el sofá mientras llueve sobre la ciudad. Mañana iremos a la playa.",
    "Language models predict the next token. I modelli linguistici predicono la parola successiva.",
    "user assistant model system Hello Ciao Hola question answer risposta respuesta domanda pregunta",
    "### Instruction: write a response. ### Input: a text. ### Response: here is the answer.",
    "Roma, Milano, Napoli e Torino sono città italiane. Madrid y Sevilla son ciudades españolas.",
] * 4

VOCAB = 360  # byte alphabet (256) + specials + about 90 merges

# ---------------------------------------------------------------------------------------
# Chat templates, in templates/: <family>.jinja as the family's tokenizer_config.json has it
# (tools branches included where the family has them; only the plain chat path is exercised
# here), and <family>.marked.jinja, the same with {% generation %} around what the model must
# produce (for qwen3 the empty think block of the last answer included).
# Llama 3.1 Instruct, Mistral-7B-Instruct-v0.1, Qwen2.5, Qwen3, Gemma 2, Gemma 3, Phi-3.

TEMPLATES = Path(__file__).resolve().parent / "templates"


def read_template(name: str) -> str:
    # newline="" keeps the files' bytes as they are: a template's whitespace is part of its output
    with open(TEMPLATES / f"{name}.jinja", encoding="utf-8", newline="") as f:
        return f.read()


@dataclasses.dataclass
class Family:
    name: str
    model_type: str
    specials: list            # (token, special, rstrip), in id order after the byte-level vocabulary's start
    bos: str | None
    eos: str
    unk: str | None
    pad: str | None
    adds_bos: bool
    stop: list                # generation_config.eos_token_id, as tokens
    document_end: str         # the base model's end of text
    end_of_turn: str
    system_role: bool         # the template renders a system message
    config: dict

    @property
    def template(self) -> str:
        return read_template(self.name)

    @property
    def marked(self) -> str:
        return read_template(f"{self.name}.marked")


FAMILIES = {
    "llama3": Family(
        "llama3", "llama",
        [(t, True, False) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                                    "<|python_tag|>")],
        bos="<|begin_of_text|>", eos="<|eot_id|>", unk=None, pad=None, adds_bos=True,
        stop=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], document_end="<|end_of_text|>",
        end_of_turn="<|eot_id|>", system_role=True,
        config=dict(num_key_value_heads=2, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 32})),
    "mistral": Family(
        "mistral", "mistral", [(t, True, False) for t in ("<unk>", "<s>", "</s>")],
        bos="<s>", eos="</s>", unk="<unk>", pad=None, adds_bos=True,
        stop=["</s>"], document_end="</s>", end_of_turn="</s>", system_role=False,
        config=dict(num_key_value_heads=2, sliding_window=8)),
    "qwen2": Family(
        "qwen2", "qwen2", [(t, True, False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                     "<|fim_pad|>", "<|vision_pad|>")],
        bos=None, eos="<|im_end|>", unk=None, pad="<|endoftext|>", adds_bos=False,
        stop=["<|im_end|>", "<|endoftext|>"], document_end="<|endoftext|>",
        end_of_turn="<|im_end|>", system_role=True, config=dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": Family(
        "qwen3", "qwen3", [(t, True, False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                     "<|fim_pad|>", "<|vision_pad|>")]
        + [("<think>", False, False), ("</think>", False, False)],
        bos=None, eos="<|im_end|>", unk=None, pad="<|endoftext|>", adds_bos=False,
        stop=["<|im_end|>", "<|endoftext|>"], document_end="<|endoftext|>",
        end_of_turn="<|im_end|>", system_role=True, config=dict(num_key_value_heads=2, head_dim=8)),
    "gemma2": Family(
        "gemma2", "gemma2", [(t, True, False) for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>",
                                                       "<end_of_turn>")],
        bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", adds_bos=True,
        stop=["<eos>", "<end_of_turn>"], document_end="<eos>", end_of_turn="<end_of_turn>",
        system_role=False,
        config=dict(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                    final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                    layer_types=["sliding_attention", "full_attention"])),
    "gemma3": Family(
        "gemma3", "gemma3_text", [(t, True, False) for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>",
                                                            "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                                                            "<image_soft_token>")],
        bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", adds_bos=True,
        stop=["<eos>", "<end_of_turn>"], document_end="<eos>", end_of_turn="<end_of_turn>",
        system_role=True,
        config=dict(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=None)),
    "phi3": Family(
        "phi3", "phi3", [("<unk>", True, False), ("<s>", True, False), ("</s>", False, True),
                         ("<|endoftext|>", True, False), ("<|assistant|>", True, True), ("<|placeholder1|>", True, True),
                         ("<|system|>", True, True), ("<|end|>", True, True), ("<|user|>", True, True)],
        bos="<s>", eos="<|endoftext|>", unk="<unk>", pad="<|endoftext|>", adds_bos=False,
        stop=["<|endoftext|>", "<|assistant|>", "<|end|>"], document_end="<|endoftext|>",
        end_of_turn="<|end|>", system_role=True, config=dict(num_key_value_heads=2, sliding_window=8)),
}

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256)


def build_tokenizer(family: Family):
    """A byte-level BPE tokenizer learnt on CORPUS, with the family's special tokens and template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=family.unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    names = [t for t, _, _ in family.specials]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=names, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=special, rstrip=rstrip, normalized=False)
                    for t, special, rstrip in family.specials])
    if family.adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", pair=f"{family.bos} $A {family.bos} $B",
            special_tokens=[(family.bos, tok.token_to_id(family.bos))])
    roles = {"bos_token": family.bos, "eos_token": family.eos, "unk_token": family.unk, "pad_token": family.pad}
    named = {k: v for k, v in roles.items() if v is not None}
    extra = [t for t, special, _ in family.specials if special and t not in named.values()]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **named, additional_special_tokens=extra,
                                        model_max_length=SIZES["max_position_embeddings"],
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = family.template
    return tokenizer


def build_model(family: Family, tokenizer, seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _, _ in family.specials}
    config = AutoConfig.for_model(
        family.model_type, vocab_size=len(tokenizer), **SIZES, **family.config,
        bos_token_id=ids.get(family.bos), eos_token_id=[ids[t] for t in family.stop],
        pad_token_id=ids.get(family.pad))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=ids.get(family.bos), pad_token_id=ids.get(family.pad),
                                               eos_token_id=[ids[t] for t in family.stop])
    return model


def save_family(name: str, folder: Path) -> Path:
    return save_built(FAMILIES[name], build_model, folder)


def save_built(family: Family, build, folder: Path) -> Path:
    """The family's tokenizer and the model `build(family, tokenizer)` makes, saved as a checkpoint."""
    tokenizer = build_tokenizer(family)
    build(family, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_gemma3_vision(folder: Path) -> Path:
    """A tiny Gemma 3 vision-language checkpoint (Gemma3ForConditionalGeneration with a SigLIP tower),
    as the 4B-and-larger Gemma 3 models are: the language model sits next to a vision tower whose
    layers have linear layers of the same names (q_proj, k_proj, v_proj)."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, GenerationConfig

    family = FAMILIES["gemma3"]
    tokenizer = build_tokenizer(family)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _, _ in family.specials}
    text = dict(model_type="gemma3_text", vocab_size=len(tokenizer), **SIZES, **family.config,
                bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"])
    vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, image_size=28, patch_size=14, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=1,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"],
                          eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]])
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
                                               pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
