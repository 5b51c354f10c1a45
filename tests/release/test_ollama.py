"""Ollama Modelfiles: the TEMPLATE, rendered as Ollama renders it (tests/helpers/go_template.py),
gives the prompt the run's saved chat template gives, for every family and format."""

import json

import pytest
from helpers.families import FAMILIES
from helpers.go_template import render
from helpers.ollama import ollama_prompt, parse_modelfile

from llamantino import __version__
from llamantino.core.errors import LlamantinoError

CONVERSATIONS = [
    [{"role": "user", "content": "Ciao, chi sei?"}],
    [{"role": "system", "content": "Sei un assistente che risponde solo in italiano."},
     {"role": "user", "content": "Perché il cielo è blu? Dimmelo \"in breve\"."}],
    [{"role": "user", "content": "Scrivi {{ .System }} e {% raw %} così come sono."},
     {"role": "assistant", "content": "Ecco: {{ .System }} e {% raw %}."},
     {"role": "user", "content": "Grazie, e l'altra?"}],
    [{"role": "system", "content": "Parla come un pirata."},
     {"role": "user", "content": "Dove andiamo?"},
     {"role": "assistant", "content": "All'isola del tesoro!"},
     {"role": "user", "content": "Quando?"},
     {"role": "assistant", "content": "Domani all'alba."},
     {"role": "user", "content": "Con chi?"},
     {"role": "assistant", "content": "Con la ciurma."},
     {"role": "user", "content": "Va bene."}],
]


# ---------------------------------------------------------------------------------------
# The renderer itself: Go's semantics, so it cannot hide a bug in a template


def test_renderer_trims_and_nests_as_go_does():
    source = ("A  {{- 1 -}}  B\n"
              "{{- range $i, $m := .Messages }}\n"
              "  {{- if eq $m.Role \"system\" }}<s:{{ $m.Content }}>\n"
              "  {{- else if and (eq .Role \"user\") (gt $i 1) }}<late:{{ .Content }}:{{ $.Name }}>\n"
              "  {{- else if eq .Role \"user\" \"tool\" }}<u{{ $i }}>\n"
              "    {{- range $j, $c := $.Inner }}[{{ $i }}.{{ $j }}={{ $c }}]{{ end }}\n"
              "  {{- else }} <other {{ len (slice $.Messages $i) }}> \n"
              "  {{- end }}\n"
              "{{- end }}|{{ (index .Messages 0).Role }}|{{ or .Empty \"fallback\" }}|{{ not .Empty }}|"
              "{{ $n := 0 }}{{ range .Messages }}{{ $n = 7 }}{{ end }}{{ $n }}|"
              "{{ range .Nothing }}x{{ else }}empty{{ end }}|{{ \"{{\" }}| {{- \" \" -}} |")
    data = {"Name": "N", "Empty": "", "Nothing": [], "Inner": ["a", "b"],
            "Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "U1"},
                         {"Role": "assistant", "Content": "A"}, {"Role": "user", "Content": "U2"}]}
    assert render(source, data) == ("A1B<s:S><u1>[1.0=a][1.1=b] <other 2><late:U2:N>|system|fallback|true|7|"
                                    "empty|{{| |")


def test_renderer_refuses_what_it_does_not_know():
    with pytest.raises(ValueError, match="field"):
        render("{{ .Missing }}", {})
    with pytest.raises(ValueError, match="not defined"):
        render("{{ trim .A }}", {"A": "x"})
    with pytest.raises(ValueError, match="unclosed"):
        render("{{ if .A }}x", {"A": 1})
    with pytest.raises(ValueError, match="unexpected"):
        render("x{{ end }}", {})


def test_modelfile_reader_keeps_quoted_whitespace():
    parsed = parse_modelfile('# c\nFROM ./m.gguf\nTEMPLATE """ a\n\tb """\nSYSTEM """s"""\n'
                             'PARAMETER stop "<|x|>"\nPARAMETER stop "</s>"\nPARAMETER num_ctx 64\n')
    assert parsed == {"from": "./m.gguf", "template": " a\n\tb ", "system": "s",
                      "parameters": {"stop": ["<|x|>", "</s>"], "num_ctx": ["64"]}}


# ---------------------------------------------------------------------------------------
# Modelfiles of every family and format


def _run_folder(tmp_path, family_dir, prompt_format, system_prompt="auto", max_length=None):
    """A run as sft leaves it: the tokenizer saved with the chat template of its format."""
    from llamantino.data.prompts import prompt_format as resolve
    from llamantino.models.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(family_dir))
    tokenizer.chat_template = resolve(prompt_format, tokenizer, system_prompt).chat_template
    run = tmp_path / "run"
    tokenizer.save_pretrained(run)
    settings = {"prompt_format": prompt_format, "system_prompt": system_prompt, "max_length": max_length or 512}
    (run / "manifest.json").write_text(json.dumps({"llamantino": __version__, "stage": "sft", "settings": settings}))
    return run


FORMATS = ["auto", "llama2-chat", "chatml", "auto+system"]


@pytest.mark.parametrize("prompt_format", FORMATS)
def test_template_renders_the_saved_chat_template(tiny_family, tmp_path, prompt_format):
    from transformers import AutoTokenizer

    from llamantino.models.modeling import adds_bos
    from llamantino.release.ollama import build_modelfile

    family, folder = tiny_family
    if prompt_format == "chatml" and family.name not in ("qwen2", "qwen3"):
        pytest.skip("chatml needs <|im_start|> and <|im_end|> in the tokenizer")
    run = None
    if prompt_format != "auto":
        name, system = ("auto", "Sei un assistente italiano.") if prompt_format == "auto+system" else \
            (prompt_format, "auto")
        run = _run_folder(tmp_path, folder, name, system)
    tokenizer = AutoTokenizer.from_pretrained(run or folder)
    bos = adds_bos(tokenizer)
    text, summary = build_modelfile(folder, run, gguf_name="m.gguf", add_bos=bos)
    modelfile = parse_modelfile(text)
    assert modelfile["from"] == "./m.gguf"
    if prompt_format == "llama2-chat":
        assert modelfile["system"].startswith("Sei un assistente disponibile, rispettoso e onesto.")
    for conversation in CONVERSATIONS:
        if family.name in ("gemma2", "mistral") and prompt_format == "auto" and conversation[0]["role"] == "system":
            continue  # their own templates refuse a system message; with a system prompt setting they fold it
        expected = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        got = ollama_prompt(modelfile, conversation)
        # llama.cpp puts the BOS in front itself when the GGUF says so: the model sees the same tokens
        assert (tokenizer.bos_token if bos else "") + got == expected
    stops = modelfile["parameters"]["stop"]
    assert summary["end_of_turn"] == family.end_of_turn or prompt_format == "llama2-chat" or \
        (prompt_format == "chatml" and summary["end_of_turn"] == "<|im_end|>")
    assert summary["end_of_turn"] in stops
    assert set(family.stop) <= set(stops)  # the generation config's EOS ids, as chat stops at them
    # the run's training length, else (no run) the model's context
    assert modelfile["parameters"]["num_ctx"] == (["512"] if run else ["256"])


def test_num_ctx_is_the_training_length(family_dirs, tmp_path):
    from llamantino.release.ollama import build_modelfile

    folder = family_dirs("qwen2")
    run = _run_folder(tmp_path, folder, "chatml", max_length=128)
    text, summary = build_modelfile(folder, run, gguf_name="m.gguf", add_bos=False)
    assert parse_modelfile(text)["parameters"]["num_ctx"] == ["128"] and summary["num_ctx"] == 128


def test_a_template_that_cannot_be_translated_is_named_in_one_line(family_dirs, tmp_path):
    from llamantino.release.ollama import build_modelfile

    folder = family_dirs("qwen2")
    template = tmp_path / "numbered.jinja"  # turns numbered by position: no Go template of ours says that
    template.write_text("{% for m in messages %}<|im_start|>{{ m.role }} {{ loop.index }}\n{{ m.content }}"
                        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(LlamantinoError, match="numbered.jinja: .*position") as err:
        build_modelfile(folder, None, gguf_name="m.gguf", add_bos=False, prompt_format=str(template))
    assert "\n" not in str(err.value)
    with pytest.raises(LlamantinoError, match="alpaca-it is an instruction prompt"):
        build_modelfile(folder, None, gguf_name="m.gguf", add_bos=False, prompt_format="alpaca-it")


def test_bos_llama_cpp_adds_must_open_the_template(family_dirs):
    from llamantino.release.ollama import build_modelfile

    # Phi-3's template writes no <s>: a GGUF that adds one would show the model a token it never saw
    with pytest.raises(LlamantinoError, match="does not begin with it"):
        build_modelfile(family_dirs("phi3"), None, gguf_name="m.gguf", add_bos=True)


def test_text_a_modelfile_cannot_quote_is_refused(family_dirs):
    from llamantino.release.ollama import build_modelfile

    with pytest.raises(LlamantinoError, match='system prompt holds """'):
        build_modelfile(family_dirs("qwen2"), None, gguf_name="m.gguf", add_bos=False,
                        system_prompt='Rispondi con """ tre virgolette.')


# ---------------------------------------------------------------------------------------
# The command


def test_export_ollama_writes_a_folder_ollama_create_reads(tiny_model_dir, make_random_adapter, tmp_path):
    from llamantino.core.fileio import sha256_file
    from llamantino.models.gguf_files import read_metadata
    from llamantino.release.ollama import Config, run

    adapter = make_random_adapter(tmp_path / "adapter", seed=1)
    out = tmp_path / "Demo Chat"
    summary = run(Config(model=str(tiny_model_dir), adapter=str(adapter), output=str(out), type="q8_0"))
    name = "demo-chat"
    assert summary["status"] == "done" and summary["metrics"]["name"] == name
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.gguf", f"{name}.gguf.sha256", "Modelfile", "README.md", "manifest.json"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    assert (out / f"{name}.gguf.sha256").read_text().split()[0] == sha256_file(out / f"{name}.gguf")
    assert read_metadata(out / f"{name}.gguf")[0]["general.file_type"] == 7  # MOSTLY_Q8_0
    modelfile = parse_modelfile((out / "Modelfile").read_text())
    assert modelfile["from"] == f"./{name}.gguf"
    # no chat template of its own: chat's default, the paper's llama2-chat with the Italian system prompt
    assert modelfile["system"].startswith("Sei un assistente disponibile")
    assert ollama_prompt(modelfile, [{"role": "user", "content": "Ciao!"}]).startswith("[INST] <<SYS>>\nSei un")
    assert f"ollama create {name} -f Modelfile" in (out / "README.md").read_text()
    again = run(Config(model=str(tiny_model_dir), adapter=str(adapter), output=str(out), type="q8_0"))
    assert again["status"] == "skipped (done)"


def test_export_ollama_refuses_before_writing(family_dirs, tmp_path, capsys):
    from llamantino.cli import main

    folder = family_dirs("qwen2")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["export", "ollama", str(folder), "--output", str(out), "--prompt-format", "alpaca-it"]) != 0
    err = capsys.readouterr().err.strip()
    assert "alpaca-it is an instruction prompt" in err and len(err.splitlines()) == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_a_run_trained_on_a_merged_model_needs_that_model(tiny_model_dir, make_random_adapter, tmp_path):
    from llamantino.release.ollama import Config, run

    adapter = make_random_adapter(tmp_path / "sft", seed=2)
    (adapter / "manifest.json").write_text(json.dumps({"llamantino": __version__, "stage": "sft", "settings": {
        "model": str(tiny_model_dir), "adapter": str(tmp_path / "adapt")}}))
    with pytest.raises(LlamantinoError, match="give that merged model"):
        run(Config(model=str(adapter), output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
