"""Chat fine-tuning: the Italian LLaMA 2 format byte for byte, the loss mask, the run, preview, chat."""

import csv
import io
import json
import sys

import pytest

from llamantino.cli import main
from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import ITALIAN_SYSTEM_PROMPT, LLAMA2_CHAT_TEMPLATE, render_chat
from llamantino.data.supervised import IGNORE, encode

from helpers.family_runs import answer_runs

DIALOGUE = [
    {"role": "user", "content": "Ciao! Come stai?"},
    {"role": "assistant", "content": "Bene, grazie. E tu?"},
    {"role": "user", "content": "Tutto bene. Mi consigli un libro?"},
    {"role": "assistant", "content": "Ti consiglio \"I promessi sposi\" di Manzoni."},
]


def test_render_matches_the_paper_format_byte_for_byte():
    text = render_chat(DIALOGUE).text
    expected = ("<s>[INST] <<SYS>>\n" + ITALIAN_SYSTEM_PROMPT + "\n<</SYS>>\n\n"
                "Ciao! Come stai? [/INST] Bene, grazie. E tu? </s>"
                "<s>[INST] Tutto bene. Mi consigli un libro? [/INST] "
                "Ti consiglio \"I promessi sposi\" di Manzoni. </s>")
    assert text == expected
    assert ITALIAN_SYSTEM_PROMPT.startswith("Sei un assistente disponibile, rispettoso e onesto. Rispondi sempre "
                                            "nel modo piu' utile possibile")
    assert ITALIAN_SYSTEM_PROMPT.endswith("non condividere informazioni false.")
    with_system = render_chat([{"role": "system", "content": "Sii breve."}] + DIALOGUE[:2]).text
    assert with_system == "<s>[INST] <<SYS>>\nSii breve.\n<</SYS>>\n\nCiao! Come stai? [/INST] Bene, grazie. E tu? </s>"


@pytest.mark.parametrize("messages", [DIALOGUE, [{"role": "system", "content": "Rispondi in rima."}] + DIALOGUE,
                                      DIALOGUE[:2], [{"role": "user", "content": "  spazi  "},
                                                     {"role": "assistant", "content": "\nok\n"}]])
def test_chat_template_renders_the_training_format_exactly(tiny_tokenizer, messages):
    tok = tiny_tokenizer
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    assert tok.apply_chat_template(messages, tokenize=False) == render_chat(messages).text
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt == render_chat(messages[:-1]).text and prompt.endswith("[/INST]")


def test_loss_mask_covers_exactly_the_answers_and_their_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    rendered = render_chat(DIALOGUE)
    example = encode(tok, rendered)
    # Same tokens and same mask as transformers' own assistant mask from the template.
    hf = tok.apply_chat_template(DIALOGUE, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert example.input_ids == hf["input_ids"]
    assert [int(x != IGNORE) for x in example.labels] == hf["assistant_masks"]
    # Decoded, the trained runs are exactly " answer </s>" for each assistant turn.
    runs = answer_runs(example)
    decoded = [tok.decode(r) for r in runs]
    assert decoded == [" Bene, grazie. E tu? </s>", " Ti consiglio \"I promessi sposi\" di Manzoni. </s>"]
    assert all(runs[i][-1] == tok.eos_token_id for i in range(2))


@pytest.mark.parametrize("messages,message", [
    ([{"role": "assistant", "content": "Ciao"}], "roles out of order"),
    ([{"role": "user", "content": "Ciao"}, {"role": "user", "content": "Ehi"}], "roles out of order"),
    ([{"role": "user", "content": "Ciao"}, {"role": "assistant", "content": "  "}], "is empty"),
    ([{"role": "narrator", "content": "x"}], "unknown role"),
])
def test_bad_conversations_are_refused(messages, message):
    with pytest.raises(LlamantinoError, match=message):
        render_chat(messages)


def write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def dialogues(n=12):
    return [{"prompt": f"Domanda {i}?", "prompt_id": f"p{i}",
             "messages": [{"role": "user", "content": f"Domanda {i}?"},
                          {"role": "assistant", "content": f"Risposta numero {i}."}]} for i in range(n)]


def sft_args(model, data, out, *extra):
    return ["sft", "--model", str(model), "--data", str(data), "--output", str(out), "--max-length", "512",
            "--batch-size", "2", "--max-steps", "3", "--logging-steps", "1", *extra]


def first_loss(run):
    with open(run / "metrics.csv", newline="") as handle:
        return float(next(row["loss"] for row in csv.DictReader(handle) if row["loss"]))


def test_sft_merges_the_language_adapter_and_saves_the_chat_template(tmp_path, tiny_model_dir, make_random_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_random_adapter(tmp_path / "ita", seed=3)  # non-zero: the adapted model is another model
    data = write(tmp_path / "chat.jsonl", dialogues())
    out = tmp_path / "chat"
    assert main(sft_args(tiny_model_dir, data, out, "--adapter", str(adapter))) == 0
    # The first step's loss is that of the model trained from (the new adapter starts at zero):
    # base + language adapter, merged here with peft itself, and not the base alone.
    merged = tmp_path / "merged"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter) \
        .merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(merged)
    assert main(sft_args(merged, data, tmp_path / "from-merged", "--max-steps", "1")) == 0
    assert main(sft_args(tiny_model_dir, data, tmp_path / "from-base", "--max-steps", "1")) == 0
    adapted, by_hand, base_only = (first_loss(run) for run in (out, tmp_path / "from-merged", tmp_path / "from-base"))
    assert adapted == pytest.approx(by_hand, rel=1e-5)
    assert abs(adapted - base_only) > 0.01, (adapted, base_only)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "sft" and manifest["settings"]["adapter"] == str(adapter)
    assert manifest["metrics"]["formats"] == ["ultrachat_200k"] and manifest["metrics"]["examples"] >= 6
    assert not (out / "merged-base").exists()  # the full merged copy is not kept
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template(DIALOGUE, tokenize=False) == render_chat(DIALOGUE).text
    without_system = tok.apply_chat_template(DIALOGUE[:1], tokenize=False, add_generation_prompt=True)
    assert ITALIAN_SYSTEM_PROMPT in without_system
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    PeftModel.from_pretrained(base, out)


def test_sft_reads_original_ultrachat_and_rejects_bad_records(tmp_path, tiny_model_dir, capsys):
    good = write(tmp_path / "uc.jsonl", [{"id": str(i), "data": [f"Domanda {i}?", f"Risposta {i}."]}
                                         for i in range(8)])
    assert main(sft_args(tiny_model_dir, good, tmp_path / "ok")) == 0
    odd = write(tmp_path / "odd.jsonl", [{"id": "0", "data": ["Domanda?", "Risposta.", "E poi?"]}])
    assert main(sft_args(tiny_model_dir, odd, tmp_path / "bad")) == 2
    err = capsys.readouterr().err
    assert "odd.jsonl:1" in err and "no answer" in err
    assert not (tmp_path / "bad").exists()
    short = write(tmp_path / "short.jsonl", dialogues(4))
    assert main(sft_args(tiny_model_dir, short, tmp_path / "tiny", "--max-length", "32")) == 2
    assert "raise max_length" in capsys.readouterr().err


def test_preview_marks_the_trained_spans(tmp_path, tiny_model_dir, capsys):
    data = write(tmp_path / "chat.jsonl", dialogues(3))
    assert main(["preview", "--format", "llama2-chat", "--data", str(data), "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- example") == 2
    assert "[/INST]⟦ Risposta numero 0. </s>⟧" in out
    assert main(["preview", "--format", "llama2-chat", "--data", str(data), "--n", "1", "--plain"]) == 0
    plain = capsys.readouterr().out
    assert "⟦" not in plain and plain.startswith("<s>[INST] <<SYS>>\n")
    assert main(["preview", "--format", "llama2-chat", "--data", str(data), "--n", "1",
                 "--tokenizer", str(tiny_model_dir)]) == 0
    tokens = capsys.readouterr().out
    assert "tokens," in tokens and "trained" in tokens and "⟦ Risposta numero 0. </s>⟧" in tokens
    dolly = write(tmp_path / "dolly.jsonl", [{"instruction": "Riassumi.", "context": "", "response": "Fatto.",
                                              "category": "summarization"}])
    assert main(["preview", "--format", "alpaca-it", "--data", str(dolly)]) == 0
    shown = capsys.readouterr().out
    assert "### Input:" not in shown and "### Risposta:\n⟦Fatto.</s>⟧" in shown


def test_chat_answers_once_and_handles_commands(tmp_path, tiny_model_dir, capsys, monkeypatch):
    assert main(["chat", str(tiny_model_dir), "--prompt", "Ciao!", "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Ciao!\n/system Sii breve.\n/reset\n/exit\n"))
    assert main(["chat", str(tiny_model_dir), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "/reset" in out and "system prompt set" in out and "new conversation" in out


def test_chat_takes_its_system_prompt_from_one_setting(tiny_model_dir):
    from llamantino.core.runner import config_for
    from llamantino.evaluate import chat

    with pytest.raises(LlamantinoError, match="unknown setting 'system'"):
        config_for("chat", model="m", prompts=["Ciao!"], system="Sii breve.")
    _, _, fmt = chat.load(str(tiny_model_dir), "", "llama2-chat", "Sii breve.")
    assert chat.Conversation(fmt).prompt("Ciao!").startswith("<s>[INST] <<SYS>>\nSii breve.\n<</SYS>>\n\nCiao!")


def test_generation_is_batched_and_matches_one_at_a_time(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from llamantino.models.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = ["Il gatto", "Domani andremo al mare con", "Ciao"]
    batched = generate(model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tiny_tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
