"""`llamantino eval evalita`: generate, decode, score, and write official submission files
that the official-format scorer (`evalita score`) reads back to the same figures."""

import json
import math

import pytest
import torch

from llamantino.cli import main
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.evaluate import prompt_for, submission_name
from llamantino.evaluate.evalita.samples import sample_files

# ---------------------------------------------------------------------------------------
# Generate -> decode -> submission file -> score, on answers whose scores are known.
#
# A scripted model stands in for the weights (the one thing replaced): everything from the
# rendered prompt to the scores is the real code. For each task, in the order of the bundled
# test sample, the answers a model might give: the gold answer for about half of the items,
# a wrong or malformed one for the rest. Every figure below is worked out by hand from them.

SCRIPT = {
    # gold 1 0 1 0 1 0 1 0 1 0
    "acti-a": ["Sì.", "No", "si, è una teoria del complotto", "No.", "Non saprei.",
               "sì", "no", "### Risposta:", "no", "si"],
    # gold Covid Covid Qanon Qanon Russia Russia TerraPiatta TerraPiatta
    "acti-b": ["Covid", "Qanon", "QAnon", "boh", "Russia", "Terra Piatta", "Terra piatta.", "Covid"],
    # 9 gold relations (2 1 0 1 2 2 1 0 per document)
    "clinkart": ["[BREL] 11,2 g/dl [SEP] Emoglobina [EREL] [BREL] 34% [SEP] ematocrito [EREL]",
                 "[BREL] 24 atti/min [SEP] Frequenza [EREL]",
                 "[NOREL]",
                 "[BREL] torace [SEP] radiografia [EREL]",          # wrong result: fp 1, fn 1
                 "[BREL] 210 mg/dl [SEP] Glicemia [EREL]",          # one of two: fn 1
                 "Non lo so",                                       # undecodable: fn 2
                 "[BREL] 90/60 mmHg [SEP] Pressione [EREL]",
                 "[BREL] allergia [SEP] Nessuna [EREL]"],           # none in the gold: fp 1
    # gold 1 0 1 0 1 0 1 0 1 0
    "discotex-1": ["Coerente", "Incoerente.", "coerente", "Non coerente", "Coerente",
                   "Coerente", "Incoerente", "forse", "La frase è incoerente", "Coerente"],
    "discotex-2": ["4.4666667", "1.7333333", "4,6", "Il punteggio è 2.8666667", "4.7333333",
                   "3", "punteggio alto", "7", "2", "5"],
    "emit": ["gioia, amore", "Rabbia e disgusto.", "neutrale", "sorpresa", "tristezza, amore",
             "gioia", "paura", "non saprei", "rabbia", "tristezza"],
    "geolingit": ["[regione] Lazio [geo] 41.8902 12.4922", "[regione] Campania [geo] 40.8359 14.2488",
                  "[regione] Sicilia [geo] 38.1938 15.554", "[regione] Veneto [geo] 45.6669 12.243",
                  "[regione] Lombardia [geo] 45.5416 10.2118",
                  "[regione] Lombardia [geo] 45.0703 7.6869",       # gold Piemonte 44.3845 7.5427
                  "boh",                                            # gold Toscana 43.3188 11.3308
                  "[regione] Sicilia [geo] 40.1209 9.0129",         # gold Sardegna, same point
                  "[regione] Puglia",                               # no point: gold 41.1253 16.8663
                  "[regione] Atlantide [geo] 44.4073 8.9339"],      # gold Liguria, same point
    # gold 1 0 0 1 0 0 1 0 1 0
    "haspeede3": ["Sì", "no", "No, non contiene odio", "si", "no", "si", "no", "forse", "non lo so", "si"],
    "haspeede3-contextual": ["Sì", "no", "No, non contiene odio", "si", "no", "si", "no", "forse", "non lo so",
                             "si"],
    # gold 1 0 1 0 1 0 1 0 1 0
    "hodi-a": ["si", "no", "Sì, è omotransfobico", "no", "si", "si", "Non omotransfobico", "si", "no", "???"],
    "hodi-b": ["finocchi", "Non omotransfobico", "non sono una famiglia [SEP] schifo", "Non omotransfobico.",
               "trans fallito", "Pride", "malati", "documentario", "Non omotransfobico", "Auguri"],
    # CItA gold 0 1 0 1 0 1, COWS-L2H gold 1 0 0 1
    "langlearn": ["no", "si", "Il documento 2 è stato scritto prima", "no", "boh", "si",
                  "si", "si", "no", "no"],
    "nermud": ["[PER] Mario Draghi [LOC] Roma", "[ORG] Ferrari [LOC] Maranello", "Nessuna menzione",
               "[PER] Giorgio Armani [LOC] Milano", "[ORG] ONU [LOC] Siria",
               "[LOC] Trento",                    # gold [ORG] Comune di Trento
               "[PER] Valentino",                 # gold [PER] Valentino Rossi
               "[ORG] Adige [LOC] Verona",        # gold [LOC] Adige [LOC] Verona
               "non lo so",                       # gold [ORG] Polizia di Stato
               "[PER] Sanremo"],                  # gold [LOC] Sanremo
    # gold (F L ML) (M R R) (M L L) (F R MR) (M L ML) (F L L) (M R MR) (M R R)
    "politicit": ["donna sinistra centrosinistra", "uomo destra destra", "uomo sinistra sinistra",
                  "donna destra centrodestra", "donna sinistra centrosinistra", "boh",
                  "uomo sinistra centrosinistra", "uomo"],
    # gold 0 1 0 1 0 1 0 1 0 1
    "wic-ita": ["no", "sì", "No.", "si", "no", "no", "si", "Forse", "si", "no"],
}

# What a model says after its answer when nothing stops it: a "sì" that would turn the
# undecodable answers above into yes, so a missed stop token changes the scores.
AFTER_THE_END = "\n\n### Istruzione:\nsì, certo"


def km(lat1, lon1, lat2, lon2):
    """Great-circle distance, mean Earth radius 6371.0088 km (haversine 2.8.0's)."""
    p1, p2, dp, dl = map(math.radians, (lat1, lat2, lat2 - lat1, lon2 - lon1))
    return 2 * 6371.0088 * math.asin(math.sqrt(math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2)
                                               * math.sin(dl / 2) ** 2))


NARNI = (42.5176, 12.5156)  # where an unreadable position is put (the centre of Italy)
GEO_KM = (km(44.3845, 7.5427, 45.0703, 7.6869) + km(43.3188, 11.3308, *NARNI) + km(41.1253, 16.8663, *NARNI)) / 10

EXPECTED = {
    # class 1: tp 2 (0, 2), fp 2 (5, 9), fn 3 (4 undecodable, 6, 8): F1 4/9; class 0 the mirror: 4/9
    "acti-a": {"macro_f1": 4 / 9, "accuracy": 4 / 10, "f1_0": 4 / 9, "f1_1": 4 / 9},
    # Covid tp 1 fp 1 fn 1: 1/2; Qanon the same; Russia tp 1 fn 1: 2/3; Terra Piatta tp 1 fp 1 fn 1: 1/2
    "acti-b": {"macro_f1": (1 / 2 + 1 / 2 + 2 / 3 + 1 / 2) / 4, "accuracy": 4 / 8, "f1_russia": 2 / 3},
    # tp 5, fp 2, fn 4
    "clinkart": {"precision": 5 / 7, "recall": 5 / 9, "f1": 5 / 8, "gold_relations": 9,
                 "predicted_relations": 7},
    "discotex-1": {"accuracy": 5 / 10},
    # discotex-2: discotex_2_expected() below
    # per column F1: Anger 1, Anticipation 0, Disgust 1, Fear 1, Joy 2/3, Love 1, Neutral 2/3,
    # Sadness 1/2, Surprise 1, Trust 0 -> 41/6 over 10 columns
    "emit": {"macro_f1": 41 / 60, "f1_joy": 2 / 3, "f1_neutral": 2 / 3, "f1_sadness": 1 / 2, "f1_trust": 0.0},
    # A: Lazio, Campania, Veneto, Puglia 1; Sicilia, Lombardia tp 1 fp 1: 2/3; the other 7 of the
    # 13 dev regions 0 -> (4 + 4/3) / 13; B: three rows off, over 10 rows
    "geolingit": {"a_macro_f1": 16 / 39, "a_accuracy": 6 / 10, "a_regions": 13, "b_mean_km": GEO_KM,
                  "b_unparsed": 2},
    # hate: tp 2 fp 2 fn 2: 1/2; non-hate: tp 3 fp 1 fn 3: 3/5
    "haspeede3": {"macro_f1": 11 / 20, "f1_hate": 1 / 2, "f1_non_hate": 3 / 5, "accuracy": 5 / 10},
    "haspeede3-contextual": {"macro_f1": 11 / 20, "f1_hate": 1 / 2, "f1_non_hate": 3 / 5, "accuracy": 5 / 10},
    # class 1: tp 3 fp 2 fn 2: 3/5; class 0: tp 2 fp 1 fn 3: 1/2
    "hodi-a": {"macro_f1": 11 / 20, "accuracy": 5 / 10, "f1_0": 1 / 2, "f1_1": 3 / 5},
    # five right (1 each, two of them empty answers to empty gold cells); "malati" 2*6/(6+15);
    # the rest 0 -> (5 + 4/7) / 10
    "hodi-b": {"f1": 39 / 70},
    # CItA: class 1 tp 2 fn 1: 4/5, class 0 tp 1 fp 1 fn 2: 2/5 -> 3/5; COWS-L2H: 1/2 and 1/2
    "langlearn": {"macro_f1": 11 / 20, "CItA_macro_f1": 3 / 5, "CItA_accuracy": 3 / 6,
                  "COWS-L2H_macro_f1": 1 / 2, "COWS-L2H_accuracy": 2 / 4},
    # tokens: PER tp 5 fp 1 fn 1; LOC tp 5 fp 1 fn 2; ORG tp 2 fp 1 fn 6; micro tp 12 fp 3 fn 9
    "nermud": {"PER_f1": 5 / 6, "LOC_f1": 10 / 13, "ORG_f1": 4 / 11, "ORG_recall": 2 / 8, "ORG_support": 8,
               "micro_precision": 4 / 5, "micro_recall": 4 / 7, "micro_f1": 2 / 3,
               "macro_f1": (5 / 6 + 10 / 13 + 4 / 11) / 3},
    # gender: female 2/3, male 8/9; binary: left 3/4, right 2/3; multiclass: moderate_left 4/5, the
    # other three 2/3
    "politicit": {"gender_macro_f1": 7 / 9, "ideology_binary_macro_f1": 17 / 24,
                  "ideology_multiclass_macro_f1": 7 / 10, "macro_f1": (7 / 9 + 17 / 24 + 7 / 10) / 3},
    # class 1: tp 2 fp 2 fn 3: 4/9; class 0: tp 3 fp 2 fn 2: 3/5
    "wic-ita": {"macro_f1": 47 / 90, "f1_1": 4 / 9, "f1_0": 3 / 5, "precision_1": 1 / 2, "accuracy": 5 / 10},
}
UNDECODABLE = {"acti-a": 2, "acti-b": 1, "clinkart": 1, "discotex-1": 1, "discotex-2": 2, "emit": 1, "geolingit": 1,
               "haspeede3": 2, "haspeede3-contextual": 2, "hodi-a": 2, "hodi-b": 0, "langlearn": 2, "nermud": 0,
               "politicit": 1, "wic-ita": 1}


def discotex_2_expected():
    """Correlations of the gold means with the decoded scores, by scipy: the unreadable
    "punteggio alto" and the out-of-scale 7 stand at the middle of the scale, 3.0."""
    from scipy.stats import pearsonr, spearmanr

    gold = [4.4666667, 1.7333333, 4.6, 2.8666667, 4.7333333, 1.5333333, 4.2, 1.8666667, 3.7333333, 3.2]
    pred = [4.4666667, 1.7333333, 4.6, 2.8666667, 4.7333333, 3.0, 3.0, 3.0, 2.0, 5.0]
    return {"pearson": pearsonr(gold, pred)[0], "spearman": spearmanr(gold, pred)[0], "unparsed": 2}


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: answers each prompt from SCRIPT, token by token as
    `model.generate` does (greedy, left-padded batch): the answer, the format's end-of-turn
    token, then AFTER_THE_END, stopping after the first token among `eos_token_id` and
    padding the rest. A prompt is recognised by the instruction and input it holds."""

    def __init__(self, folder, end_of_turn: str):
        from transformers import AutoConfig, AutoTokenizer

        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # generate() takes the device from here
        self.config = AutoConfig.from_pretrained(folder)
        # Room for every prompt: the tiny family models have 256 positions, and generate()
        # keeps only a prompt's last tokens that fit (what is checked here is each format).
        self.config.max_position_embeddings = 4096
        self.generation_config = None                    # stop tokens: the tokenizer's EOS and the format's
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids(end_of_turn)
        self.answers = []                                # (instruction, input, answer)
        for task, answers in SCRIPT.items():
            items = get_task(task).read(sample_files(task, "test"))
            assert len(items) == len(answers), task
            self.answers += [(it.instruction, it.input.strip(), answer) for it, answer in zip(items, answers)]
        self.prompts_seen = 0

    def answer_for(self, prompt: str) -> str:
        found = [answer for instruction, text, answer in self.answers if instruction in prompt and text in prompt]
        assert len(found) == 1, prompt
        return found[0]

    def encode(self, text):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert self.tokenizer.decode(ids) == text  # byte-level BPE: what is scripted is what is read
        return ids

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **_):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            answer = self.encode(self.answer_for(self.tokenizer.decode(ids[mask.bool()])))
            assert len(answer) < max_new_tokens, "the scripted answer does not fit in max_new_tokens"
            new = []
            for token in answer + [self.end_of_turn] + self.encode(AFTER_THE_END):
                new.append(token)
                if token in eos_token_id or len(new) == max_new_tokens:
                    break
            rows.append(ids.tolist() + new + [pad_token_id] * (max_new_tokens - len(new)))
            self.prompts_seen += 1
        return torch.tensor(rows)


def figures(metrics: dict, expected: dict):
    return {key: metrics[key] for key in expected}


# model family -> (prompt format, the end-of-turn token the answers must stop at)
FORMATS = {
    "tiny-llama": ("alpaca-it", "</s>"),     # the paper's Italian Alpaca prompt
    "gemma2": ("alpaca", "<eos>"),           # Stanford Alpaca's English prompt, Gemma's EOS
    "mistral": ("llama2-chat", "</s>"),      # the paper's LLaMA 2 chat format
    "qwen2": ("chatml", "<|im_end|>"),
    "gemma3": ("auto", "<end_of_turn>"),     # the tokenizer's own template: ends turns other than EOS
    "llama3": ("auto", "<|eot_id|>"),
}


@pytest.mark.parametrize("family", FORMATS)
def test_eval_evalita_scores_scripted_answers_as_worked_out_by_hand(family, tmp_path, tiny_model_dir, family_dirs,
                                                                    monkeypatch, capsys):
    import llamantino.models.modeling

    folder = tiny_model_dir if family == "tiny-llama" else family_dirs(family)
    prompt_format, end_of_turn = FORMATS[family]
    model = ScriptedModel(folder, end_of_turn)
    loaded = []

    def load_with_adapter(path, adapter="", **kwargs):
        loaded.append((path, adapter))
        return model

    # The seam where `eval evalita` gets its model: the weights are replaced, nothing else.
    monkeypatch.setattr(llamantino.models.modeling, "load_with_adapter", load_with_adapter)
    out = tmp_path / "report"
    assert main(["eval", "evalita", "--model", str(folder), "--samples", "test", "--prompt-format", prompt_format,
                 "--max-new-tokens", "96", "--batch-size", "4", "--output", str(out)]) == 0
    capsys.readouterr()
    assert loaded == [(str(folder), "")] and model.prompts_seen == sum(map(len, SCRIPT.values()))
    expected = dict(EXPECTED, **{"discotex-2": discotex_2_expected()})
    report = json.loads((out / "report.json").read_text())
    assert list(report) == list(SCRIPT)
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    for task, answers in SCRIPT.items():
        # the answers read back are the scripted ones, cut at the end of the turn
        assert [g["answer"] for g in generations if g["task"] == task] == answers, task
        assert report[task]["items"] == len(answers)
        assert report[task]["undecodable"] == UNDECODABLE[task], task
        assert figures(report[task]["metrics"], expected[task]) == pytest.approx(expected[task]), task
        # the submission file, scored on its own, gives the same figures
        assert main(["evalita", "score", "--task", task, "--gold", *map(str, sample_files(task, "test")),
                     "--pred", str(out / "predictions" / submission_name(task))]) == 0
        scored = json.loads(capsys.readouterr().out)["metrics"]
        if task == "geolingit":  # the submission is subtask A's file: regions only
            expected_file = {k: v for k, v in expected[task].items() if k.startswith("a_")}
            assert not any(k.startswith("b_") for k in scored)
        else:
            expected_file = expected[task]
        assert figures(scored, expected_file) == pytest.approx(expected_file), task


def test_the_scripted_answers_would_score_otherwise_without_the_stop_token(tmp_path, tiny_model_dir):
    """The negative control of the test above: a stand-in whose answers run on past the end
    of the turn changes the figures, so the test sees a missed stop."""
    model = ScriptedModel(tiny_model_dir, "<unk>")  # ends its turn with a token nobody stops at
    from llamantino.evaluate.evalita.evaluate import Config, evaluate_task
    from llamantino.models.modeling import load_tokenizer

    task = get_task("acti-a")
    items = task.read(sample_files("acti-a", "test"))
    metrics, rows, _ = evaluate_task(task, items, model, load_tokenizer(str(tiny_model_dir)),
                                     Config(model=str(tiny_model_dir), max_new_tokens=96))
    assert rows[4]["answer"].startswith("Non saprei.") and rows[4]["decoded"] == 1
    assert metrics["macro_f1"] != pytest.approx(EXPECTED["acti-a"]["macro_f1"])


def test_prompts_use_the_italian_alpaca_format_without_a_response():
    from llamantino.evaluate.evalita import get_task

    task = get_task("acti-a")
    item = task.read(sample_files("acti-a", "test"))[0]
    prompt = prompt_for(item, 1200)
    assert prompt.startswith("Di seguito è riportata un'istruzione che descrive un'attività")
    assert "### Istruzione:\nStabilisci se il seguente testo contiene una teoria del complotto o cospirazione. " \
           "Rispondi con si o no.\n\n### Input:\n" in prompt
    assert prompt.endswith("### Risposta:\n")
    assert len(prompt_for(item, 10)) < len(prompt)


def test_eval_evalita_errors(tmp_path, tiny_model_dir, capsys):
    assert main(["eval", "evalita", "--model", str(tiny_model_dir), "--samples", "test", "--tasks", "acti-c"]) == 2
    assert "unknown EVALITA task 'acti-c'" in capsys.readouterr().err
    assert main(["eval", "evalita", "--model", str(tiny_model_dir), "--data", "acti-a"]) == 2
    assert "expected TASK=PATH" in capsys.readouterr().err
    blind = tmp_path / "test.csv"
    blind.write_text("Id,comment_text\n0,un testo senza etichetta\n")
    assert main(["eval", "evalita", "--model", str(tiny_model_dir), "--data", f"acti-a={blind}"]) == 2
    assert "test.csv: 1 item(s) without gold" in capsys.readouterr().err
