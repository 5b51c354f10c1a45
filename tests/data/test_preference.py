"""Preference pairs (data/preference.py): chat rows rendered per family (one BOS or none, the
prompt through the generation prompt, the family's end-of-turn token closing both answers),
plain-string rows equal to TRL's own tokenization, truncation, bad rows, the UltraFeedback
form read as a hub dataset, parquet, and the bundled demo pairs."""

import gzip
import json
import logging
import types

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.data import prompts
from llamantino.data.preference import load_pairs
from llamantino.data.supervised import encode
from llamantino.models.modeling import load_tokenizer

USER = [{"role": "user", "content": "Come si cucina la pasta?"}]
CHOSEN = "Si cuoce in acqua salata bollente."
REJECTED = "You boil it in salted water."
# Bigger numbers of the families whose template writes a BOS (Qwen has none, Phi-3's template writes none).
WITH_BOS = ("gemma2", "gemma3", "llama3", "mistral")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


CHAT_FORMS = {
    # TRL's conversational preference format
    "messages": {"prompt": USER, "chosen": [{"role": "assistant", "content": CHOSEN}],
                 "rejected": [{"role": "assistant", "content": REJECTED}]},
    "strings": {"prompt": USER, "chosen": CHOSEN, "rejected": REJECTED},
    # UltraFeedback-binarized: whole conversations, the prompt also as a string
    "conversations": {"prompt": USER[0]["content"], "chosen": USER + [{"role": "assistant", "content": CHOSEN}],
                      "rejected": USER + [{"role": "assistant", "content": REJECTED}]},
    # a multi-turn prompt: an earlier answer is part of the prompt
    "multi-turn": {"prompt": [{"role": "user", "content": "Ciao! Come stai?"},
                              {"role": "assistant", "content": "Bene, grazie. E tu?"}] + USER,
                   "chosen": CHOSEN, "rejected": REJECTED},
    # whole conversations without a prompt field (TRL's extract_prompt)
    "implicit": {"chosen": USER + [{"role": "assistant", "content": CHOSEN}],
                 "rejected": USER + [{"role": "assistant", "content": REJECTED}]},
}


@pytest.mark.parametrize("form", sorted(CHAT_FORMS))
def test_a_chat_pair_has_one_bos_the_prompt_first_and_the_end_of_turn_last(tiny_family, tmp_path, form):
    family, folder = tiny_family
    tokenizer = load_tokenizer(str(folder))
    data = write_jsonl(tmp_path / "pairs.jsonl", [CHAT_FORMS[form]])
    pair = load_pairs([str(data)], tokenizer, system_prompt="none").pairs[0]
    assert pair.source == f"{data}:1" and not pair.cut
    bos = tokenizer.bos_token_id
    everything = pair.prompt + pair.chosen + pair.rejected
    if family.name in WITH_BOS:
        assert everything.count(bos) == 1 and pair.prompt[0] == bos
    else:
        assert bos is None or bos not in everything
    eot = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    assert pair.chosen[-1] == eot and pair.rejected[-1] == eot
    assert eot not in pair.chosen[:-1] and eot not in pair.rejected[:-1]
    # The prompt is the conversation through the generation prompt, as the model sees it when answering.
    chat = prompts.prompt_format("auto", tokenizer, "none")
    turns = CHAT_FORMS[form]["prompt"] if form == "multi-turn" else USER
    generation = chat.render_conversation(turns, add_generation_prompt=True)
    assert pair.prompt == encode(tokenizer, generation).input_ids
    assert ("Bene, grazie. E tu?" in tokenizer.decode(pair.prompt)) == (form == "multi-turn")
    # prompt + answer is what sft trains on for this conversation, up to the end of turn.
    for answer, ids in ((CHOSEN, pair.chosen), (REJECTED, pair.rejected)):
        full = encode(tokenizer, chat.render_conversation(turns + [{"role": "assistant", "content": answer}]))
        assert full.input_ids[:len(pair.prompt) + len(ids)] == pair.prompt + ids
        assert answer in tokenizer.decode(ids)


def test_llama2_chat_and_a_system_prompt_render_as_sft_does(family_dirs, tmp_path):
    tokenizer = load_tokenizer(str(family_dirs("mistral")))
    data = write_jsonl(tmp_path / "pairs.jsonl", [CHAT_FORMS["strings"]])
    pair = load_pairs([str(data)], tokenizer, prompt_format="llama2-chat").pairs[0]
    text = tokenizer.decode(pair.prompt)
    assert text.startswith("<s>[INST] <<SYS>>\n" + prompts.ITALIAN_SYSTEM_PROMPT) and text.endswith(" [/INST]")
    assert tokenizer.decode(pair.chosen) == f" {CHOSEN} </s>"
    own = load_pairs([str(data)], tokenizer, prompt_format="llama2-chat", system_prompt="Rispondi in breve.").pairs[0]
    assert "<<SYS>>\nRispondi in breve.\n<</SYS>>" in tokenizer.decode(own.prompt)


# A template whose generation prompt ends inside a word ("... ris" + "posta"): a token merges across it.
MERGING = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}{{ m['content'] }} ris"
           "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def test_a_token_across_the_end_of_the_prompt_puts_the_cut_where_trl_puts_it(family_dirs, tmp_path):
    tokenizer = load_tokenizer(str(family_dirs("mistral")))
    template = tmp_path / "merging.jinja"
    template.write_text(MERGING, encoding="utf-8")
    rows = [{"prompt": [{"role": "user", "content": "Domanda"}], "chosen": [{"role": "assistant", "content": "posta"}],
             "rejected": [{"role": "assistant", "content": "x"}]}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    pair = load_pairs([str(data)], tokenizer, prompt_format=str(template)).pairs[0]
    # The chosen rendering has a token "sp" across the joint, the rejected one "s": the prompt stops before both.
    chat = prompts.prompt_format(str(template), tokenizer)
    for field, ids in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        full = encode(tokenizer, chat.render_conversation(rows[0]["prompt"] + rows[0][field])).input_ids
        assert pair.prompt + ids == full
    assert tokenizer.decode(pair.prompt).endswith("ri") and tokenizer.decode(pair.rejected) == "sx</s>"
    # TRL's conversational rows with the same template give the same ids.
    tokenizer.chat_template = MERGING
    assert trl_pairs(tokenizer, rows, 1024) == [(pair.prompt, pair.chosen, pair.rejected)]


# ---------------------------------------------------------------------------------------
# Plain strings: exactly TRL's tokenization


PLAIN = [
    {"prompt": "Il gatto dorme sul divano?", "chosen": " Sì, dorme.", "rejected": " No, the cat is out."},
    {"prompt": "Domani andremo al mare ", "chosen": "con il treno.", "rejected": "by car, maybe."},  # space at the joint
    {"prompt": "Question: ", "chosen": "risposta breve", "rejected": "answer"},
    {"prompt": "Roma, Milano, Napoli e Torino sono città italiane. Quale è la capitale?",
     "chosen": " Roma è la capitale d'Italia e la città più grande del paese.", "rejected": " Milano."},
]


def trl_pairs(tokenizer, rows, max_length):
    """TRL 1.16's own preprocessing (`DPOTrainer._prepare_dataset`: EOS added, prompt and prompt +
    answer tokenized, the answer from where they part) and its collator's truncation."""
    from datasets import Dataset
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    args = DPOConfig(output_dir="unused", max_length=max_length, report_to=[], use_cpu=True)
    # The method reads only the tokenizer from the trainer: no model is built for it.
    data = DPOTrainer._prepare_dataset(types.SimpleNamespace(_tokenizer=tokenizer), Dataset.from_list(rows),
                                       tokenizer, args, "train")
    out = []
    for row in data:
        batch = DataCollatorForPreference(pad_token_id=-1, max_length=max_length)([row])
        seqs = []
        for ids, mask in zip(batch["input_ids"].tolist(), batch["completion_mask"].tolist()):
            ids = [t for t in ids if t != -1]
            seqs.append((ids[:mask.index(1)], ids[mask.index(1):]))
        assert seqs[0][0] == seqs[1][0]
        out.append((seqs[0][0], seqs[0][1], seqs[1][1]))
    return out


@pytest.mark.parametrize("name", ["llama3", "qwen2", "mistral"])
@pytest.mark.parametrize("cut", [False, True])
def test_plain_rows_are_tokenized_as_trl_does(family_dirs, tmp_path, name, cut):
    tokenizer = load_tokenizer(str(family_dirs(name)))
    rows = PLAIN + [{"prompt": "Ciao", "chosen": "Ciao!" + tokenizer.eos_token, "rejected": "Hi!"}]
    # cut: room for every prompt and 3 answer tokens, so that the longer answers are cut
    max_length = max(len(tokenizer(r["prompt"])["input_ids"]) for r in rows) + 3 if cut else 1024
    data = write_jsonl(tmp_path / "plain.jsonl", rows)
    ours = load_pairs([str(data)], tokenizer, max_length=max_length, max_prompt_length=max_length)
    expected = trl_pairs(tokenizer, rows, max_length)
    assert [(p.prompt, p.chosen, p.rejected) for p in ours.pairs] == expected
    assert (ours.cut > 0) == cut
    first = ours.pairs[0]
    assert (first.prompt[0] == tokenizer.bos_token_id) == (name != "qwen2")
    if not cut:
        assert first.chosen[-1] == tokenizer.eos_token_id and first.rejected[-1] == tokenizer.eos_token_id


# ---------------------------------------------------------------------------------------
# Truncation


def test_a_long_prompt_keeps_its_end_and_the_answers_are_cut_from_the_right(family_dirs, tmp_path):
    tokenizer = load_tokenizer(str(family_dirs("llama3")))
    long_question = "Il gatto dorme sul divano mentre la pioggia cade sulla città. " * 4 + "Cosa fa il gatto?"
    long_answer = "Il gatto dorme, e domani andremo al mare con il treno. " * 3
    rows = [{"prompt": [{"role": "user", "content": long_question}], "chosen": long_answer, "rejected": "It sleeps."},
            CHAT_FORMS["strings"]]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    whole = load_pairs([str(data)], tokenizer, max_length=1024, max_prompt_length=1024)
    assert whole.cut == 0 and not any(p.cut for p in whole.pairs)
    full = whole.pairs[0]
    # A prompt longer than max_prompt_length (but shorter than max_length) is cut from the left.
    keep = len(full.prompt) - 60
    max_length = len(full.prompt) + 1
    room = max_length - keep
    assert keep > 10 and len(full.chosen) > room > len(full.rejected)
    cut = load_pairs([str(data)], tokenizer, max_length=max_length, max_prompt_length=keep)
    assert cut.cut == 1 and [p.cut for p in cut.pairs] == [True, False]
    pair = cut.pairs[0]
    # The prompt: its BOS, then its last tokens (the generation prompt is kept).
    assert len(pair.prompt) == keep and pair.prompt[0] == tokenizer.bos_token_id
    assert pair.prompt[1:] == full.prompt[-(keep - 1):]
    # The answers: cut from the right so that prompt + answer fits max_length; a short one is whole.
    assert pair.chosen == full.chosen[:room]
    assert pair.rejected == full.rejected
    assert cut.pairs[1] == whole.pairs[1]


def test_a_prompt_that_fills_max_length_is_a_bad_row(family_dirs, tmp_path):
    tokenizer = load_tokenizer(str(family_dirs("qwen2")))
    rows = [PLAIN[0], {"prompt": "Il gatto dorme sul divano. " * 20, "chosen": "Sì.", "rejected": "Yes."}]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(LlamantinoError, match=r"p\.jsonl:2: field 'prompt': \d+ tokens once rendered, max_length is 40"):
        load_pairs([str(data)], tokenizer, max_length=40, max_prompt_length=20)
    kept = load_pairs([str(data)], tokenizer, max_length=40, max_prompt_length=20, skip_bad_lines=True)
    assert len(kept.pairs) == 1 and kept.skipped == 1


# ---------------------------------------------------------------------------------------
# Bad rows: one line naming file, line and field; or counted and skipped


BAD = [
    ({"prompt": "Ciao", "rejected": "Hi"}, r"missing field 'chosen'"),
    ({"prompt": "Ciao", "chosen": "Ciao!"}, r"missing field 'rejected'"),
    ({"chosen": "Ciao!", "rejected": "Hi"}, r"missing field 'prompt'"),
    ({"prompt": "Ciao", "chosen": "Ciao!", "rejected": "Ciao!"}, r"field 'rejected' is the same as 'chosen'"),
    ({"prompt": USER, "chosen": CHOSEN, "rejected": CHOSEN}, r"field 'rejected' is the same as 'chosen'"),
    ({"prompt": "Ciao", "chosen": "  ", "rejected": "Hi"}, r"field 'chosen' is empty"),
    ({"prompt": USER, "chosen": [{"role": "assistant", "content": ""}], "rejected": "Hi"}, r"field 'chosen' is empty"),
    ({"prompt": "", "chosen": "Ciao!", "rejected": "Hi"}, r"field 'prompt' is empty"),
    ({"prompt": "Ciao", "chosen": 3, "rejected": "Hi"}, r"field 'chosen' must be a string or a list of messages, got int"),
    ({"prompt": {"role": "user"}, "chosen": "a", "rejected": "b"}, r"field 'prompt' must be a string or a list"),
    ({"prompt": "Ciao", "chosen": "Ciao!", "rejected": None}, r"field 'rejected' must be a string .*got NoneType"),
    ({"prompt": USER, "chosen": [{"role": "user", "content": "x"}], "rejected": "b"},
     r"field 'chosen' must hold one assistant answer after the prompt \(found: user\)"),
    ({"prompt": USER, "chosen": [{"content": "x"}], "rejected": "b"}, r"field 'chosen': message 0 needs 'role'"),
    ({"prompt": USER, "chosen": [{"role": "assistant", "content": 5}], "rejected": "b"},
     r"field 'chosen': message 0 has content of type int"),
    ({"prompt": "Altra domanda", "chosen": USER + [{"role": "assistant", "content": "a"}], "rejected": "b"},
     r"field 'chosen' is a conversation that does not start with the prompt"),
    ({"prompt": USER + [{"role": "assistant", "content": "a"}], "chosen": "b", "rejected": "c"},
     r"field 'prompt' must end with a user turn"),
    ({"prompt": [{"role": "narrator", "content": "a"}], "chosen": "b", "rejected": "c"},
     r"field 'prompt': turn 0 has unknown role 'narrator'"),
]


@pytest.mark.parametrize("row,message", BAD)
def test_a_bad_row_is_one_line_naming_file_line_and_field(family_dirs, tmp_path, row, message):
    tokenizer = load_tokenizer(str(family_dirs("llama3")))
    data = write_jsonl(tmp_path / "bad.jsonl", [CHAT_FORMS["strings"], row, PLAIN[0]])
    with pytest.raises(LlamantinoError, match=r"bad\.jsonl:2: " + message) as error:
        load_pairs([str(data)], tokenizer)
    assert "\n" not in str(error.value)
    kept = load_pairs([str(data)], tokenizer, skip_bad_lines=True)
    assert [p.source for p in kept.pairs] == [f"{data}:1", f"{data}:3"] and kept.skipped == 1


def test_malformed_json_lines_are_skipped_and_counted_too(family_dirs, tmp_path, caplog):
    tokenizer = load_tokenizer(str(family_dirs("qwen2")))
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(PLAIN[0]) + "\n{not json\n[1, 2]\n" + json.dumps(PLAIN[1]) + "\n", encoding="utf-8")
    with pytest.raises(LlamantinoError, match=r"bad\.jsonl:2: malformed JSON"):
        load_pairs([str(data)], tokenizer)
    with caplog.at_level(logging.WARNING, logger="llamantino.data.preference"):
        kept = load_pairs([str(data)], tokenizer, skip_bad_lines=True)
    assert [p.source for p in kept.pairs] == [f"{data}:1", f"{data}:4"] and kept.skipped == 2
    assert [r.getMessage().split(": ")[1] for r in caplog.records] == [f"{data}:2", f"{data}:3"]


def test_no_pair_at_all_is_an_error(family_dirs, tmp_path):
    tokenizer = load_tokenizer(str(family_dirs("qwen2")))
    data = write_jsonl(tmp_path / "none.jsonl", [BAD[0][0]])
    with pytest.raises(LlamantinoError, match=r"none\.jsonl: no preference pairs \(1 bad rows skipped\)"):
        load_pairs([str(data)], tokenizer, skip_bad_lines=True)


# ---------------------------------------------------------------------------------------
# Sources: a hub dataset (UltraFeedback form), parquet, folders; fingerprint and limit


def ultrafeedback_row(i):
    """A row as HuggingFaceH4/ultrafeedback_binarized and its Italian translations have it."""
    question = f"Scrivi una frase sul numero {i}."
    chosen = [{"role": "user", "content": question}, {"role": "assistant", "content": f"Il numero {i} è bello."}]
    rejected = [{"role": "user", "content": question}, {"role": "assistant", "content": f"Number {i} is nice."}]
    return {"prompt": question, "prompt_id": f"id{i}", "chosen": chosen, "rejected": rejected,
            "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.5}


def test_an_ultrafeedback_hub_dataset_reads_as_the_same_rows_in_a_file(family_dirs, tmp_path):
    tokenizer = load_tokenizer(str(family_dirs("llama3")))
    data = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row(i) for i in range(3)])
    local = load_pairs([str(data)], tokenizer)
    hub = load_pairs([f"hub:json?data_files={data}"], tokenizer)
    assert [(p.prompt, p.chosen, p.rejected) for p in hub.pairs] == [(p.prompt, p.chosen, p.rejected)
                                                                      for p in local.pairs]
    assert hub.fingerprint == local.fingerprint and hub.pairs[2].source.endswith("record 3")
    assert tokenizer.decode(hub.pairs[1].chosen) == "Il numero 1 è bello.<|eot_id|>"
    # The same conversations as TRL's conversational form give the same ids.
    trl_form = write_jsonl(tmp_path / "trl.jsonl", [
        {"prompt": r["chosen"][:1], "chosen": r["chosen"][1:], "rejected": r["rejected"][1:]}
        for r in map(ultrafeedback_row, range(3))])
    assert load_pairs([str(trl_form)], tokenizer).fingerprint == local.fingerprint


def test_parquet_folders_and_gzip_read_as_json_lines(family_dirs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tokenizer = load_tokenizer(str(family_dirs("gemma2")))
    rows = [ultrafeedback_row(i) for i in range(4)] + [dict(CHAT_FORMS["messages"])]
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", rows[:2])
    gz = write_jsonl(tmp_path / "b.jsonl", rows[2:])
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(gz.read_bytes()))
    table = pa.Table.from_pylist([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows[:4]])
    pq.write_table(table, tmp_path / "uf.parquet", row_group_size=2)
    from_folder = load_pairs([str(folder)], tokenizer)
    from_parquet = load_pairs([str(tmp_path / "uf.parquet")], tokenizer)
    assert len(from_folder.pairs) == 5 and from_folder.pairs[4].source == f"{folder / 'b.jsonl.gz'}:3"
    assert [p.chosen for p in from_parquet.pairs] == [p.chosen for p in from_folder.pairs[:4]]
    assert from_parquet.pairs[3].source.endswith("uf.parquet: row 4")


def test_the_fingerprint_follows_every_token_and_limit_stops_early(family_dirs, tmp_path):
    tokenizer = load_tokenizer(str(family_dirs("qwen2")))
    a = write_jsonl(tmp_path / "a.jsonl", PLAIN)
    b = write_jsonl(tmp_path / "b.jsonl", PLAIN[:3] + [dict(PLAIN[3], rejected=" Napoli.")])
    first, again, other = (load_pairs([str(p)], tokenizer) for p in (a, a, b))
    assert first.fingerprint == again.fingerprint != other.fingerprint
    assert load_pairs([str(a)], tokenizer, max_length=50).fingerprint != first.fingerprint
    two = load_pairs([str(a)], tokenizer, limit=2)
    assert [p.source for p in two.pairs] == [f"{a}:1", f"{a}:2"]
    assert two.fingerprint == load_pairs([str(write_jsonl(tmp_path / "c.jsonl", PLAIN[:2]))], tokenizer).fingerprint


def test_plain_text_and_instruction_prompts_are_refused(family_dirs, tmp_path):
    tokenizer = load_tokenizer(str(family_dirs("qwen2")))
    text = tmp_path / "doc.txt"
    text.write_text("Il gatto dorme.\n", encoding="utf-8")
    with pytest.raises(LlamantinoError, match="plain text holds documents, not preference pairs"):
        load_pairs([str(text)], tokenizer)
    data = write_jsonl(tmp_path / "chat.jsonl", [CHAT_FORMS["strings"]])
    with pytest.raises(LlamantinoError, match="alpaca-it is an instruction prompt"):
        load_pairs([str(data)], tokenizer, prompt_format="alpaca-it")


# ---------------------------------------------------------------------------------------
# The bundled demo pairs


def test_the_demo_pairs_load_whole_with_the_demo_tokenizer():
    from llamantino.data.langid import make_detector
    from llamantino.demo.demo_base import ASSETS_DIR, build_tokenizer, read_paragraphs

    tokenizer = build_tokenizer(read_paragraphs([str(ASSETS_DIR / "demo" / "en_train.txt")]), 4096)
    detect = make_detector().detect
    questions = []
    for name, least in (("it_preferences.jsonl", 80), ("it_preferences_heldout.jsonl", 24)):
        path = ASSETS_DIR / "demo" / name
        pairs = load_pairs([str(path)], tokenizer, prompt_format="llama2-chat", system_prompt="none",
                           max_length=256, max_prompt_length=128)
        assert len(pairs.pairs) >= least and pairs.cut == 0 and pairs.skipped == 0
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert all(len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" for r in rows)
        questions += [r["prompt"][0]["content"] for r in rows]
        # Chosen: fluent Italian; rejected: English, or Italian that is broken.
        assert {detect(r["chosen"][0]["content"]) for r in rows} == {"it"}
        rejected = [detect(r["rejected"][0]["content"]) for r in rows]
        assert rejected.count("en") >= len(rows) // 3 and rejected.count("it") >= len(rows) // 3
    assert len(set(questions)) == len(questions)  # no question twice, none shared by training and held-out pairs


def test_preview_shows_the_prompt_and_both_answers_between_the_marks(family_dirs, tmp_path, capsys):
    from llamantino.cli import main

    folder = family_dirs("llama3")
    data = write_jsonl(tmp_path / "pairs.jsonl", [CHAT_FORMS["strings"], PLAIN[0]])
    assert main(["preview", "--data", str(data), "--tokenizer", str(folder), "--system-prompt", "none"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- pair") == 2 and f"({data}:1; " in out
    assert f"chosen:   ⟦{CHOSEN}<|eot_id|>⟧\nrejected: ⟦{REJECTED}<|eot_id|>⟧" in out
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n\nchosen:" in out
    assert f"<|begin_of_text|>{PLAIN[0]['prompt']}\nchosen:   ⟦{PLAIN[0]['chosen']}<|eot_id|>⟧" in out
    assert main(["preview", "--data", str(data), "--tokenizer", str(folder), "--n", "1", "--plain"]) == 0
    plain = capsys.readouterr().out
    assert "⟦" not in plain and "---" not in plain and plain.count("<|begin_of_text|>") == 2
    assert main(["preview", "--data", str(data)]) == 2
    assert capsys.readouterr().err == "error: preference pairs are shown in tokens: give --tokenizer\n"
