"""Today's families (Llama 3, Mistral, Qwen 2/3, Gemma 2/3, Phi-3) through every command, on tiny
random models with their real chat templates and special tokens (tests/helpers/families.py):

the chunked loss against each model's own (soft-capping; logit scaling and biased heads in
test_loss.py), packed rows
against documents one by one with the attention `auto` picks, chat formats against transformers'
own assistant mask, no invented or repeated BOS, system prompts folded where a template has no
system role, generation stopping at the end-of-turn token, document boundaries and pad tokens,
vision-language checkpoints, and adapt -> merge -> instruct -> diff -> bpb -> sft -> chat per family.
"""

import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch

from llamantino.cli import main
from llamantino.core.errors import LlamantinoError
from llamantino.data import prompts
from llamantino.data.supervised import IGNORE, encode
from llamantino.models.modeling import (adds_bos, choose_pad_token, document_end_token, freeze_outside_language_model,
                                        load_causal_lm, load_tokenizer, lora_targets, resolve_attention)

from helpers.chunked_loss import assert_same_loss, lora_model, packed_batch
from helpers.families import FAMILIES
from helpers.family_runs import BRIEF, DIALOGUES, SMALL, answer_runs, write_jsonl


CHAT = [{"role": "user", "content": "Ciao! Come stai?"},
        {"role": "assistant", "content": "Bene, grazie. E tu?"},
        {"role": "user", "content": "Tutto bene. Mi consigli un libro?"},
        {"role": "assistant", "content": "Ti consiglio \"I promessi sposi\" di Manzoni."}]
SYSTEM = {"role": "system", "content": "Rispondi in italiano, in breve."}
DOLLY = [{"instruction": f"Scrivi la parola numero {i}.", "context": "Il gatto dorme." if i % 2 else "",
          "response": f"Parola {i}.", "category": "open_qa"} for i in range(8)]


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


pytestmark = pytest.mark.usefixtures("one_thread")


def tokenizer_of(folder):
    return load_tokenizer(str(folder))


# ---------------------------------------------------------------------------------------
# The chunked loss is each model's own


def test_chunked_loss_equals_the_models_own_loss_and_gradients(tiny_family):
    family, folder = tiny_family
    model = lora_model(load_causal_lm(str(folder), dtype="float32", device="cpu"))
    own = assert_same_loss(model, len(tokenizer_of(folder)), family.name)
    if family.name == "gemma2":
        # The check can fail: the output layer alone (no soft-capping) gives another loss.
        ids, positions, labels = packed_batch(300)
        causal = model.get_base_model()
        with torch.no_grad():
            hidden = causal.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
            logits = torch.nn.functional.linear(hidden, causal.lm_head.weight)[:, :-1]
            plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
        print(f"gemma2 without soft-capping (the output layer alone): loss {float(plain):.4f}")
        assert abs(float(plain) - float(own)) > 1.0


def test_chunked_loss_of_a_vision_language_model(tiny_gemma3_vision):
    model = lora_model(load_causal_lm(str(tiny_gemma3_vision), dtype="float32", device="cpu"))
    assert_same_loss(model, len(tokenizer_of(tiny_gemma3_vision)), "gemma3-vision")


@pytest.mark.parametrize("chunk", [0, 7])
def test_rows_flattened_for_varlen_attention_give_the_same_loss(family_dirs, chunk):
    """With FlashAttention 2 the loss flattens a batch of packed rows into one sequence (its varlen
    kernel separates documents within one row only); SDPA here shows the flattening changes nothing."""
    from llamantino.evaluate.bpb import NllSum
    from llamantino.train.qlora import CausalLMLoss

    model = lora_model(load_causal_lm(str(family_dirs("gemma2")), dtype="float32", device="cpu"))
    assert NllSum(model, 8).head is not None  # bpb scores through the same output head, in chunks
    ids, positions, labels = packed_batch(300)
    loss = CausalLMLoss(model, chunk)
    n = (labels[:, 1:] != IGNORE).sum()
    rows = loss(ids, positions, labels, n)
    loss.flatten = True
    assert torch.allclose(loss(ids, positions, labels, n), rows, rtol=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Attention: `auto`, and packed rows that equal documents one by one


def test_auto_attention_per_family_and_device(tiny_family, monkeypatch):
    import transformers.utils

    from llamantino.models import modeling
    from llamantino.models.modeling import load_config

    family, folder = tiny_family
    config = load_config(str(folder))
    soft_capped = family.name == "gemma2"  # SDPA cannot soft-cap attention scores
    assert resolve_attention("auto", config, "cpu", "float32") == ("eager" if soft_capped else "sdpa")
    assert resolve_attention("eager", config, "cpu", "float32") == "eager"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert resolve_attention("auto", config, "cuda", "bfloat16") == ("flex_attention" if soft_capped else "sdpa")
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    # installed is not enough: the kernel must import and run here (it does not on this machine)
    assert resolve_attention("auto", config, "cuda", "bfloat16") == ("flex_attention" if soft_capped else "sdpa")
    monkeypatch.setattr(modeling, "probe_flash_attention", lambda impl, device, dtype: (True, ""))
    assert resolve_attention("auto", config, "cuda", "bfloat16") == "flash_attention_2"
    assert resolve_attention("auto", config, "cuda", "float32") == ("flex_attention" if soft_capped else "sdpa")


DOCS = ["Il gatto dorme sul divano mentre la pioggia cade sulla città di Roma.",
        "El gato duerme en el sofá mientras llueve sobre la ciudad.",
        "Language models predict the next token, one after the other."]


def per_token_nll(model, ids, labels, positions=None):
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
    nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll[labels[:, 1:] != IGNORE].tolist()


def assert_packing_is_exact(model, tokenizer):
    from llamantino.data.packing import DocumentPacker, collate

    packer = DocumentPacker(tokenizer, max_length=128)
    row = packer.next_row(iter(DOCS))
    batch = collate([row, row], 128, tokenizer.pad_token_id)  # two rows, padded: batch > 1 as in training
    separate = []
    with torch.no_grad():
        packed = per_token_nll(model, batch.input_ids, batch.labels, batch.position_ids)
        leaky = per_token_nll(model, batch.input_ids, batch.labels)
        for doc in DOCS:
            ids = torch.tensor([packer.encode(doc)])
            labels = ids.clone()
            labels[0, 0] = IGNORE
            separate += per_token_nll(model, ids, labels)
    assert min(len(packer.encode(d)) for d in DOCS) > 2 * 8  # longer than the sliding windows (8)
    assert len(packed) == 2 * len(separate)
    assert max(abs(a - b) for a, b in zip(packed, separate * 2)) < 1e-4
    assert max(abs(a - b) for a, b in zip(leaky, separate * 2)) > 1e-3  # the check can fail


@pytest.mark.parametrize("attention", ["auto", "eager"])
def test_a_packed_row_gives_the_losses_of_its_documents_one_by_one(tiny_family, attention):
    family, folder = tiny_family
    model = load_causal_lm(str(folder), dtype="float32", device="cpu", attn_implementation=attention)
    model.eval()
    assert_packing_is_exact(model, tokenizer_of(folder))


def test_packing_is_exact_in_a_vision_language_model(tiny_gemma3_vision):
    model = load_causal_lm(str(tiny_gemma3_vision), dtype="float32", device="cpu")
    model.eval()
    assert_packing_is_exact(model, tokenizer_of(tiny_gemma3_vision))


# ---------------------------------------------------------------------------------------
# Chat formats: the template's text, transformers' assistant mask, BOS, system prompts




@pytest.mark.parametrize("system", [False, True])
def test_the_models_template_is_rendered_and_masked_as_transformers_does(tiny_family, system):
    family, folder = tiny_family
    tokenizer = tokenizer_of(folder)
    chat = prompts.prompt_format("auto", tokenizer, "none")
    assert isinstance(chat, prompts.TemplateChat) and chat.end_of_turn == family.end_of_turn
    messages = [SYSTEM, *CHAT] if system else CHAT
    rendered = chat.render_conversation(messages)
    example = encode(tokenizer, rendered)
    # The saved template renders the same text, and the marked copy gives transformers' own mask.
    tokenizer.chat_template = chat.chat_template
    assert tokenizer.apply_chat_template(messages, tokenize=False) == rendered.text
    marked = chat.chat_template.replace(chat.source, family.marked)
    hf = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                       chat_template=marked)
    assert example.input_ids == hf["input_ids"]
    assert [int(x != IGNORE) for x in example.labels] == hf["assistant_masks"]
    runs = [tokenizer.decode(r) for r in answer_runs(example)]
    assert len(runs) == 2 and all(r.endswith(family.end_of_turn) for r in runs)
    assert runs[0].strip().startswith("Bene, grazie. E tu?") or "Bene, grazie. E tu?" in runs[0]
    # BOS: once, at the start, when the model has one; never invented (Qwen, Phi-3's template).
    bos_count = example.input_ids.count(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else 0
    assert bos_count == (1 if family.name in ("llama3", "mistral", "gemma2", "gemma3") else 0)
    assert bos_count == 0 or example.input_ids[0] == tokenizer.bos_token_id
    assert "<s>" not in rendered.text or family.bos == "<s>"
    # The system prompt: the family's way, never a <<SYS>> block.
    if system:
        assert SYSTEM["content"] in rendered.text and "<<SYS>>" not in rendered.text
        if not family.system_role:  # folded into the first user turn
            assert f"{SYSTEM['content']}\n\n{CHAT[0]['content']}" in rendered.text


def test_a_default_system_prompt_goes_where_the_family_expects_it(tiny_family, tmp_path):
    family, folder = tiny_family
    tokenizer = tokenizer_of(folder)
    spanish = tmp_path / "sistema.txt"
    spanish.write_text("Eres un asistente útil. Responde en español.\n", encoding="utf-8")
    chat = prompts.prompt_format("auto", tokenizer, str(spanish))
    tokenizer.chat_template = chat.chat_template
    text = chat.render_conversation(CHAT).text
    assert "Eres un asistente útil. Responde en español." in text and "<<SYS>>" not in text
    assert prompts.ITALIAN_SYSTEM_PROMPT not in text
    assert tokenizer.apply_chat_template(CHAT, tokenize=False) == text
    # A conversation's own system message wins; the saved template is re-wrapped, never twice.
    again = prompts.prompt_format("auto", tokenizer, "none")
    assert again.chat_template.count(prompts.PRELUDE_BEGIN) <= 1
    own = chat.render_conversation([SYSTEM, *CHAT]).text
    assert SYSTEM["content"] in own and "Eres un asistente" not in own


@pytest.mark.parametrize("name", ["qwen2", "gemma2", "llama3"])
def test_every_format_renders_for_the_family_without_an_invented_bos(family_dirs, name):
    tokenizer = tokenizer_of(family_dirs(name))
    for fmt in ("llama2-chat", "chatml", "auto"):
        if fmt == "chatml" and name != "qwen2":
            with pytest.raises(LlamantinoError, match="cannot use chatml"):
                prompts.prompt_format(fmt, tokenizer)
            continue
        chat = prompts.prompt_format(fmt, tokenizer)
        rendered = chat.render_conversation(CHAT)
        example = encode(tokenizer, rendered)
        text = tokenizer.decode(example.input_ids)
        saved = tokenizer_of(family_dirs(name))  # the template a run saves renders it (no undefined bos_token)
        saved.chat_template = chat.chat_template
        assert saved.apply_chat_template(CHAT, tokenize=False) == rendered.text
        if name == "qwen2":
            assert "<s>" not in text and tokenizer.bos_token is None
        runs = answer_runs(example)
        assert [tokenizer.decode(r[-1:]) for r in runs] == [chat.end_of_turn] * 2
    alpaca = prompts.prompt_format("alpaca-it", tokenizer)
    example = encode(tokenizer, alpaca.render_instruction("Riassumi.", "", "Fatto."))
    assert (example.input_ids[0] == tokenizer.bos_token_id) == (name != "qwen2")
    assert example.input_ids.count(tokenizer.bos_token_id) <= 1 if tokenizer.bos_token_id is not None else True


def test_a_saved_llama2_template_renders_and_masks_as_the_papers_format(tiny_model_dir):
    """An sft run of the paper's format saves its template; chat and a later run read it back (`auto`)."""
    tokenizer = tokenizer_of(tiny_model_dir)
    tokenizer.chat_template = prompts.LLAMA2_CHAT_TEMPLATE
    saved = prompts.prompt_format("auto", tokenizer)
    paper = prompts.prompt_format("llama2-chat", tokenizer)
    assert isinstance(saved, prompts.TemplateChat) and saved.end_of_turn == "</s>"
    for messages in (CHAT, [SYSTEM, *CHAT]):
        assert saved.render_conversation(messages) == paper.render_conversation(messages)
    prompt = [*CHAT[:3]]
    assert saved.render_conversation(prompt, add_generation_prompt=True).text == \
        paper.render_conversation(prompt, add_generation_prompt=True).text


def test_chatml_is_masked_as_transformers_does(family_dirs):
    tokenizer = tokenizer_of(family_dirs("qwen2"))
    chat = prompts.prompt_format("chatml", tokenizer, "Sé breve.")
    rendered = chat.render_conversation(CHAT)
    marked = chat.chat_template.replace(
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}",
        "{%- if message['role'] == 'assistant' -%}{{ '<|im_start|>assistant\\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}{%- else -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif -%}")
    assert marked != chat.chat_template
    hf = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                       chat_template=marked)
    example = encode(tokenizer, rendered)
    assert rendered.text.startswith("<|im_start|>system\nSé breve.<|im_end|>\n")
    assert example.input_ids == hf["input_ids"] and [int(x != IGNORE) for x in example.labels] == hf["assistant_masks"]


def test_instruction_prompts_in_another_language(family_dirs, tmp_path):
    from llamantino.core.runner import config_for
    from llamantino.train import instruct

    folder = family_dirs("llama3")
    tokenizer = tokenizer_of(folder)
    data = write_jsonl(tmp_path / "dolly.jsonl", DOLLY[:2])
    cfg = config_for("instruct", model=str(folder), data=[str(data)], output=str(tmp_path / "o"), prompt_format="alpaca",
                     effective_batch_size=2, batch_size=2)
    examples, _ = instruct.load_examples(cfg, tokenizer)
    text = tokenizer.decode(examples[0].input_ids)
    assert text.startswith("<|begin_of_text|>Below is an instruction that describes a task. Write a response")
    assert text.endswith("### Response:\nParola 0.<|eot_id|>") and "Istruzione" not in text
    trained = tokenizer.decode([t for t, lab in zip(examples[0].input_ids, examples[0].labels) if lab != IGNORE])
    assert trained == "Parola 0.<|eot_id|>"


# The paper's Italian system prompt (section 3.2), verbatim: "piu'" and "e'" as printed.
PAPER_SYSTEM_PROMPT = (
    "Sei un assistente disponibile, rispettoso e onesto. Rispondi sempre nel modo piu' utile possibile, pur "
    "essendo sicuro. Le risposte non devono includere contenuti dannosi, non etici, razzisti, sessisti, tossici, "
    "pericolosi o illegali. Assicurati che le tue risposte siano socialmente imparziali e positive. Se una domanda "
    "non ha senso o non e' coerente con i fatti, spiegane il motivo invece di rispondere in modo non corretto. Se "
    "non conosci la risposta a una domanda, non condividere informazioni false.")
# The paper's Italian Alpaca prompt (section 3.3), its first line
PAPER_ALPACA_HEADER = ("Di seguito è riportata un'istruzione che descrive un'attività, abbinata ad un input che "
                       "fornisce ulteriore informazione. Scrivi una risposta che soddisfi adeguatamente la richiesta.")


def test_system_prompt_and_instruction_prompt_settings(tmp_path):
    assert prompts.system_prompt("auto", "llama2-chat") == PAPER_SYSTEM_PROMPT
    assert prompts.system_prompt("auto", "chatml") is None
    assert prompts.system_prompt("none", "llama2-chat") is None
    assert prompts.system_prompt("paper-it", "chatml") == PAPER_SYSTEM_PROMPT
    assert prompts.system_prompt("Sé breve.", "chatml") == "Sé breve."
    with pytest.raises(LlamantinoError, match="system_prompt: file missing.txt not found"):
        prompts.system_prompt("missing.txt", "chatml")
    # llama2-chat without a system prompt: no <<SYS>> block; with the paper's, its Italian chat format's bytes
    chat = prompts.prompt_format("llama2-chat", None, "none")
    assert chat.render_conversation(CHAT[:2]).text == "<s>[INST] Ciao! Come stai? [/INST] Bene, grazie. E tu? </s>"
    assert prompts.prompt_format("llama2-chat").render_conversation(CHAT[:2]).text == (
        "<s>[INST] <<SYS>>\n" + PAPER_SYSTEM_PROMPT + "\n<</SYS>>\n\nCiao! Come stai? [/INST] Bene, grazie. E tu? </s>")
    # Alpaca: the paper's Italian prompt byte for byte; without an input, no ### Input: block
    it = prompts.prompt_format("alpaca-it")
    assert it.render_instruction("Traduci.", "Il gatto.", "The cat.").text == (
        PAPER_ALPACA_HEADER + "\n\n### Istruzione:\nTraduci.\n\n### Input:\nIl gatto.\n\n### Risposta:\nThe cat.</s>")
    assert it.render_instruction("Nomina.", " ").text == (
        PAPER_ALPACA_HEADER + "\n\n### Istruzione:\nNomina.\n\n### Risposta:\n")
    # Stanford Alpaca's English prompt (tatsu-lab/stanford_alpaca train.py, PROMPT_DICT), as
    # alpaca-lora's template writes it: "### Response:" followed by a newline, then the answer
    # (Stanford's own train.py puts the answer right after "### Response:").
    en = prompts.prompt_format("alpaca")
    assert en.render_instruction("Name a city.", "", "Rome").text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a city.\n\n### Response:\nRome</s>")
    assert en.render_instruction("Translate.", "Il gatto.", "The cat.").text == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
        "### Input:\nIl gatto.\n\n### Response:\nThe cat.</s>")
    template = tmp_path / "alpaca_es.json"
    template.write_text(json.dumps({"prompt_input": "### Instrucción:\n{instruction}\n### Entrada:\n{input}\n"
                                                    "### Respuesta:\n",
                                    "prompt_no_input": "### Instrucción:\n{instruction}\n### Respuesta:\n"}))
    es = prompts.prompt_format(str(template)).render_instruction("Di {input} hola.", "x", "Hola")
    assert es.text == "### Instrucción:\nDi {input} hola.\n### Entrada:\nx\n### Respuesta:\nHola</s>"
    template.write_text(json.dumps({"prompt_input": "{instruction}", "prompt_no_input": "{instruction}"}))
    with pytest.raises(LlamantinoError, match="'prompt_input' has no {input} placeholder"):
        prompts.prompt_format(str(template))
    with pytest.raises(LlamantinoError, match="neither auto, llama2-chat"):
        prompts.prompt_format("vicuna")
    with pytest.raises(LlamantinoError, match="renders with a tokenizer"):
        prompts.prompt_format("chatml")


# ---------------------------------------------------------------------------------------
# Generation stops at the end of an answer


def always(model, token_id):
    """Make the model's output layer favour one token (a forward hook on it)."""
    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_id] += 1e4
        return output
    return model.get_output_embeddings().register_forward_hook(hook)


def test_generation_stops_at_the_templates_end_of_turn(tiny_family):
    from llamantino.models.generate import generate, stop_token_ids

    family, folder = tiny_family
    tokenizer = tokenizer_of(folder)
    model = load_causal_lm(str(folder), dtype="float32", device="cpu")
    chat = prompts.prompt_format("auto", tokenizer)
    eot = tokenizer.convert_tokens_to_ids(chat.end_of_turn)
    assert set(stop_token_ids(model, tokenizer, [chat.end_of_turn])) == \
        {tokenizer.convert_tokens_to_ids(t) for t in family.stop} | {tokenizer.eos_token_id, eot}
    prompt = chat.render_conversation(CHAT[:1], add_generation_prompt=True).text
    always(model, eot)
    out = model.generate(torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]]),
                         max_new_tokens=6, do_sample=False, eos_token_id=stop_token_ids(model, tokenizer,
                                                                                          [chat.end_of_turn]))
    assert out.shape[1] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 1
    assert generate(model, tokenizer, [prompt], max_new_tokens=6, add_bos=False,
                    stop_tokens=[chat.end_of_turn]) == [""]


def test_a_llama3_base_tokenizer_stops_at_eot_too(family_dirs, tmp_path):
    """Llama 3 base: EOS <|end_of_text|>, generation config <|end_of_text|> only; trained on the chat
    template, the model ends answers with <|eot_id|> and generation must stop there."""
    from transformers import AutoModelForCausalLM

    from llamantino.models.generate import generate

    folder = family_dirs("llama3")
    tokenizer = tokenizer_of(folder)
    tokenizer.eos_token = "<|end_of_text|>"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    chat = prompts.prompt_format("auto", tokenizer)
    prompt = chat.render_conversation(CHAT[:1], add_generation_prompt=True).text
    always(model, tokenizer.convert_tokens_to_ids("<|eot_id|>"))
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    # The old behaviour, for contrast: the tokenizer's EOS alone never stops.
    old = model.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    assert old.shape[1] == ids.shape[1] + 5
    assert generate(model, tokenizer, [prompt], max_new_tokens=5, add_bos=False,
                    stop_tokens=[chat.end_of_turn]) == [""]


# ---------------------------------------------------------------------------------------
# Document boundaries and padding


def test_documents_end_with_the_base_models_end_of_text_and_pad_aliases_nothing(tiny_family):
    from llamantino.data.packing import DocumentPacker

    family, folder = tiny_family
    tokenizer = tokenizer_of(folder)
    assert document_end_token(tokenizer) == family.document_end
    assert adds_bos(tokenizer) == family.adds_bos
    learnt = {tokenizer.eos_token, family.document_end, family.end_of_turn}
    assert tokenizer.pad_token not in learnt
    expected_pad = {"llama3": "<|finetune_right_pad_id|>", "qwen2": "<|fim_pad|>", "qwen3": "<|fim_pad|>",
                    "mistral": "<unk>", "phi3": "<unk>", "gemma2": "<pad>", "gemma3": "<pad>"}[family.name]
    assert tokenizer.pad_token == expected_pad
    ids = DocumentPacker(tokenizer, 64).encode("Il gatto dorme.")
    assert ids[-1] == tokenizer.convert_tokens_to_ids(family.document_end)
    assert (ids[0] == tokenizer.bos_token_id) == family.adds_bos
    if family.name == "llama3":  # an Instruct tokenizer: its EOS is the end of a turn, not of a text
        assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.convert_tokens_to_ids("<|eot_id|>") not in ids


def test_a_tokenizer_without_any_pad_candidate_pads_with_eos_and_says_so(caplog):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    with caplog.at_level(logging.WARNING):
        assert choose_pad_token(tokenizer) == "<|endoftext|>"
    assert "no token to pad with" in caplog.text


# ---------------------------------------------------------------------------------------
# Vision-language checkpoints train their language model only


def test_lora_compile_and_fsdp_find_the_same_decoder_blocks(tiny_gemma3_vision):
    """One finder of the decoder blocks: LoRA's targets lie in them, FSDP shards each of them (and
    the vision tower's blocks) one by one, even when the checkpoint's _no_split_modules omits them."""
    from llamantino.models.modeling import decoder_blocks
    from llamantino.train.instruct import shard_units

    model = load_causal_lm(str(tiny_gemma3_vision), dtype="float32", device="cpu")
    blocks = decoder_blocks(model)
    assert blocks == list(model.model.language_model.layers)
    inside = {name for name, m in model.named_modules() if any(m is sub for b in blocks for sub in b.modules())}
    linear = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    pattern = lora_targets(model)
    assert {n for n in linear if re.fullmatch(pattern, n)} == linear & inside
    units = shard_units(model)
    assert [u for u in units if any(u is b for b in blocks)] == blocks
    assert any(type(u).__name__.startswith("Siglip") for u in units)  # the vision tower's blocks too
    parts = [sub for b in blocks for sub in b.modules() if sub is not b]
    assert not any(u is sub for u in units for sub in parts)
    model._no_split_modules = []
    assert shard_units(model) == blocks


def test_a_vision_language_checkpoint_trains_its_language_model_only(tiny_gemma3_vision, tmp_path):
    from llamantino.models.modeling import check_max_length, load_config

    config = load_config(str(tiny_gemma3_vision))
    assert not hasattr(config, "max_position_embeddings")  # it lives in the text config
    with pytest.raises(LlamantinoError, match="exceeds the model's context of 256"):
        check_max_length(config, 512, "m")
    model = load_causal_lm(str(tiny_gemma3_vision), dtype="float32", device="cpu")
    pattern = lora_targets(model)
    matched = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    assert matched and all(n.startswith("model.language_model.layers.") for n in matched)
    assert any("vision_tower" in n and n.endswith("q_proj") for n, _ in model.named_modules())
    frozen = freeze_outside_language_model(model)
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad) > 0
    assert all(not p.requires_grad for n, p in model.named_parameters() if "vision_tower" in n)
    assert all(p.requires_grad for n, p in model.named_parameters() if "language_model" in n)
    # QLoRA adaptation: adapters in the language model only.
    data = write_jsonl(tmp_path / "it.jsonl", [{"text": f"{DOCS[i % 3]} Numero {i}."} for i in range(12)])
    assert main(["adapt", "--model", str(tiny_gemma3_vision), "--data", str(data), "--output", str(tmp_path / "a"),
                 "--max-length", "64", "--batch-size", "2", "--max-steps", "1", "--save-steps", "0",
                 "--no-gradient-checkpointing"]) == 0
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "a" / "adapter_model.safetensors").keys()
    assert keys and all("language_model.layers." in k and "vision" not in k for k in keys)
    # Full fine-tuning: the loaded model trains the language model only; a run changes nothing else.
    from llamantino.core.runner import config_for
    from llamantino.train import instruct

    dolly = write_jsonl(tmp_path / "dolly.jsonl", DOLLY[:4])
    cfg = config_for("instruct", model=str(tiny_gemma3_vision), data=[str(dolly)], output=str(tmp_path / "i"),
                     max_length=128, batch_size=2, effective_batch_size=4, max_steps=1, save_steps=0,
                     prompt_format="auto", warmup_ratio=0.0, gradient_checkpointing=False, learning_rate=1e-2)
    loaded, _ = instruct.load_model(cfg, config, rank=0, world=1, device=torch.device("cpu"), compute_dtype="float32")
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all("language_model" in n or n.startswith("lm_head") for n in trainable)
    instruct.run(cfg)
    before = {n: p for n, p in model.state_dict().items()}
    after = load_causal_lm(str(tmp_path / "i"), dtype="float32", device="cpu").state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("language_model" in n or n == "lm_head.weight" for n in changed)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in changed)


# ---------------------------------------------------------------------------------------
# Every command, per family: adapt -> merge -> instruct -> diff -> bpb; sft -> chat; evaluation


def manifest(folder):
    return json.loads((Path(folder) / "manifest.json").read_text())


def test_every_command_runs_on_the_family(tiny_family, tmp_path, capsys):
    from transformers import AutoTokenizer

    from llamantino.core.runner import config_for
    from llamantino.evaluate import chat
    from llamantino.evaluate.evalita import evaluate
    from llamantino.release.weightdiff import apply_diff, make_diff, tensor_hashes
    from llamantino.train import instruct

    family, folder = tiny_family
    texts = write_jsonl(tmp_path / "it.jsonl", [{"text": f"{DOCS[i % 3]} Numero {i}."} for i in range(16)])
    # Language adaptation (QLoRA, 4-bit), then the adapter merged into the base.
    adapter = tmp_path / "adapt"
    assert main(["adapt", "--model", str(folder), "--data", str(texts), "--output", str(adapter), "--max-steps", "2",
                 *SMALL]) == 0
    assert set(manifest(adapter)["metrics"]["lora_targets"]) >= {"o_proj", "down_proj"}
    merged = tmp_path / "merged"
    assert main(["merge", "--base", str(folder), "--adapter", str(adapter), "--output", str(merged)]) == 0
    # Instruction tuning in the model's own chat template; released as an exact weight difference.
    dolly = write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    tuned = tmp_path / "instruct"
    instruct.run(config_for("instruct", model=str(merged), data=[str(dolly)], output=str(tuned), max_length=128,
                            batch_size=2, effective_batch_size=4, max_steps=1, save_steps=0, prompt_format="auto",
                            system_prompt=BRIEF, gradient_checkpointing=False, learning_rate=1e-3))
    saved = AutoTokenizer.from_pretrained(tuned)
    record = [{"role": "user", "content": DOLLY[0]["instruction"]}, {"role": "assistant", "content": "Parola 0."}]
    expected = prompts.prompt_format("auto", tokenizer_of(folder), BRIEF).render_conversation(record).text
    assert saved.apply_chat_template(record, tokenize=False) == expected
    diff, rebuilt = tmp_path / "diff", tmp_path / "rebuilt"
    make_diff(merged, tuned, diff)
    apply_diff(merged, diff, rebuilt)
    assert tensor_hashes(rebuilt) == tensor_hashes(tuned)
    # Bits per byte of base + adapter, chunked, against the model's own full logits.
    bpb = tmp_path / "bpb.json"
    assert main(["eval", "bpb", "--model", str(folder), "--adapter", str(adapter), str(texts), "--output", str(bpb),
                 "--max-length", "64", "--chunk-tokens", "5"]) == 0
    assert json.loads(bpb.read_text())["bits_per_byte"] == pytest.approx(
        reference_bpb(folder, adapter, texts), rel=1e-5)
    # Chat fine-tuning in the model's own template; the saved tokenizer renders the training format.
    dialogues = write_jsonl(tmp_path / "chat.jsonl", DIALOGUES)
    sft = tmp_path / "sft"
    assert main(["sft", "--model", str(folder), "--data", str(dialogues), "--output", str(sft), "--max-steps", "1",
                 "--system-prompt", BRIEF, *SMALL, "--max-length", "200"]) == 0
    metrics = manifest(sft)["metrics"]
    assert metrics["prompt_format"] == "auto (the tokenizer's chat template)"
    assert metrics["end_of_turn"] == family.end_of_turn
    trained = prompts.prompt_format("auto", tokenizer_of(folder), BRIEF).render_conversation(CHAT).text
    assert AutoTokenizer.from_pretrained(sft).apply_chat_template(CHAT, tokenize=False) == trained
    assert BRIEF in trained and "<<SYS>>" not in trained
    # Preview shows the trained spans: each answer with its end-of-turn token.
    assert main(["preview", "--format", "auto", "--tokenizer", str(sft), "--data", str(dialogues), "--n", "1"]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"⟦[^⟦]*Risposta 0: bene, grazie\.\s*" + re.escape(family.end_of_turn) + "⟧", shown), shown
    # Chat with the adapter, and EVALITA evaluation of the instruction-tuned model in its format.
    result = chat.run(config_for("chat", model=str(folder), adapter=str(sft), prompts=["Ciao!"], max_new_tokens=3))
    assert len(result["metrics"]["transcript"]) == 1
    assert main(["chat", str(folder), "--adapter", str(sft), "--prompt", "Ciao!", "--max-new-tokens", "2"]) == 0
    report = evaluate.run(config_for("evalita_eval", model=str(tuned), samples="test", tasks=["haspeede3"], limit=2,
                                     max_new_tokens=3, prompt_format="auto", system_prompt=BRIEF,
                                     output=str(tmp_path / "evalita")))
    assert report["metrics"]["haspeede3"]["items"] == 2


def reference_bpb(folder, adapter, texts):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llamantino.data.records import iter_documents
    from llamantino.evaluate.bpb import document_start_id

    tokenizer = tokenizer_of(folder)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), adapter)
    model.eval()
    nll = size = 0.0
    with torch.no_grad():
        for _, text in iter_documents([texts]):
            ids = torch.tensor([[document_start_id(tokenizer)] + tokenizer(text, add_special_tokens=False)["input_ids"]])
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            nll -= float(logp.gather(-1, ids[0, 1:].unsqueeze(-1)).sum())
            size += len(text.encode("utf-8"))
    return nll / (math.log(2) * size)


# ---------------------------------------------------------------------------------------
# Recipes beyond the paper: they resolve, and run on tiny stand-ins

BEYOND_THE_PAPER = {"Llama-3.1-8B-ITA": "llama3", "Llama-3-8B-Instruct-ANITA-like-ITA": "llama3",
                    "Qwen2.5-7B-Instruct-UltraChat-ITA": "qwen2", "Qwen3-30B-A3B-ITA": "qwen3_moe"}
QUICK = {"max_length": 160, "batch_size": 2, "max_steps": 1, "save_steps": 0, "gradient_checkpointing": "false"}


@pytest.mark.parametrize("name", sorted(BEYOND_THE_PAPER))
def test_recipes_beyond_the_paper_resolve_and_run_on_tiny_stand_ins(name, family_dirs, moe_family_dirs, tmp_path,
                                                                    capsys):
    assert main(["config", "show", name, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["description"].startswith("Beyond the paper")
    training = {k: v for k, v in shown["stages"].items() if v["kind"] in ("adapt", "sft", "prefer")
                and not v.get("optional")}
    for stage in training.values():
        if stage["kind"] == "prefer":  # ANITA's DPO settings
            assert (stage["lora_r"], stage["lora_alpha"], stage["learning_rate"], stage["beta"]) == (64, 16, 5e-6, 0.1)
            continue
        assert (stage["lora_r"], stage["lora_alpha"], stage["learning_rate"], stage["compute_dtype"]) == \
            (64, 16, 2e-4, "auto")
        if stage["kind"] == "sft":
            assert (stage["prompt_format"], stage["system_prompt"]) == ("auto", "paper-it")
    stand_in = BEYOND_THE_PAPER[name]
    folder = family_dirs(stand_in) if stand_in in FAMILIES else moe_family_dirs(stand_in)
    texts = write_jsonl(tmp_path / "it.jsonl", [{"text": f"{DOCS[i % 3]} Numero {i}."} for i in range(8)])
    chats = write_jsonl(tmp_path / "chat.jsonl", DIALOGUES)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": [{"role": "user", "content": f"Come si dice 'cat' in italiano? ({i})"}],
         "chosen": "Si dice 'gatto'.", "rejected": "It is said cat."} for i in range(4)])
    sets = []
    for stage, values in training.items():
        data = {"sft": chats, "prefer": pairs}.get(values["kind"], texts)
        sets += [f"{stage}.data={data}"] + [f"{stage}.{k}={v}" for k, v in QUICK.items()]
        if values["kind"] in ("sft", "prefer"):  # the paper's system prompt alone is longer than the stand-ins' context
            sets.append(f"{stage}.system_prompt={BRIEF}")
        if values["kind"] == "prefer":
            sets.append(f"{stage}.max_prompt_length=96")
        if not str(values["model"]).startswith("${") and values["model"].count("/") == 1:
            sets.append(f"{stage}.model={folder}")
    sets = [item for s in sets for item in ("--set", s)]
    assert main(["run", name, "--run-dir", str(tmp_path / "run"), *sets]) == 0
    for stage in training:
        assert (tmp_path / "run" / stage / "adapter_model.safetensors").is_file()
        if stand_in not in FAMILIES:  # a mixture of experts: every expert adapted
            adapted = manifest(tmp_path / "run" / stage)["metrics"]["lora_target_parameters"]
            assert adapted == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
