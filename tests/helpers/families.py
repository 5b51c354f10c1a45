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
# Chat templates, as their tokenizer_config.json files have them (tools branches included
# where the family has them; only the plain chat path is exercised here)

LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

LLAMA31_MARKED = LLAMA31_TEMPLATE.replace(
    """        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}""",
    """        {%- if message['role'] == 'assistant' %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
            {%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}
        {%- else %}
            {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
        {%- endif %}""")

MISTRAL_V01_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

MISTRAL_V01_MARKED = MISTRAL_V01_TEMPLATE.replace(
    "{{ message['content'] + eos_token + ' ' }}",
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ ' ' }}")

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN25_MARKED = QWEN25_TEMPLATE.replace(
    """    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}""",
    """    {%- if message.role == "assistant" and not message.tool_calls %}
        {{- '<|im_start|>assistant\\n' }}{%- generation %}{{- message.content + '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}
    {%- elif (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}""")

QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

# Everything after the generation prompt '<|im_start|>assistant\n' is the model's: the empty think
# block of the last answer included.
QWEN3_MARKED = (QWEN3_TEMPLATE
                .replace("""                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}""",
                         """                {{- '<|im_start|>' + message.role + '\\n' }}{%- generation %}{{- '<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') + '<|im_end|>' }}{%- endgeneration %}""")
                .replace("""            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}""", """            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' }}{%- generation %}{{- content + '<|im_end|>' }}{%- endgeneration %}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' }}{%- generation %}{{- content + '<|im_end|>' }}{%- endgeneration %}
        {%- endif %}""")
                .replace("""        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}""", """        {{- '\\n' }}
    {%- elif message.role == "tool" %}"""))

GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

GEMMA2_MARKED = GEMMA2_TEMPLATE.replace(
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}",
    "{% if role == 'model' %}{{ '<start_of_turn>model\n' }}{% generation %}{{ message['content'] | trim + "
    "'<end_of_turn>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endif %}")

GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""

GEMMA3_MARKED = GEMMA3_TEMPLATE.replace(
    """    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}""",
    """    {%- if message['content'] is string and role == 'model' -%}
        {% generation %}{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}{{ '\\n' }}
    {%- elif message['content'] is string -%}
        {{ message['content'] | trim }}""").replace(
    """    {{ '<end_of_turn>\\n' }}
{%- endfor -%}""", """    {%- if role != 'model' -%}{{ '<end_of_turn>\\n' }}{%- endif -%}
{%- endfor -%}""")

PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

PHI3_MARKED = PHI3_TEMPLATE.replace(
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}",
    "{{'<|assistant|>\n'}}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}")


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
    template: str
    marked: str
    stop: list                # generation_config.eos_token_id, as tokens
    document_end: str         # the base model's end of text
    end_of_turn: str
    system_role: bool         # the template renders a system message
    config: dict


FAMILIES = {
    "llama3": Family(
        "llama3", "llama",
        [(t, True, False) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                                    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                                    "<|python_tag|>")],
        bos="<|begin_of_text|>", eos="<|eot_id|>", unk=None, pad=None, adds_bos=True, template=LLAMA31_TEMPLATE,
        marked=LLAMA31_MARKED, stop=["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"], document_end="<|end_of_text|>",
        end_of_turn="<|eot_id|>", system_role=True,
        config=dict(num_key_value_heads=2, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 32})),
    "mistral": Family(
        "mistral", "mistral", [(t, True, False) for t in ("<unk>", "<s>", "</s>")],
        bos="<s>", eos="</s>", unk="<unk>", pad=None, adds_bos=True, template=MISTRAL_V01_TEMPLATE,
        marked=MISTRAL_V01_MARKED, stop=["</s>"], document_end="</s>", end_of_turn="</s>", system_role=False,
        config=dict(num_key_value_heads=2, sliding_window=8)),
    "qwen2": Family(
        "qwen2", "qwen2", [(t, True, False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                     "<|fim_pad|>", "<|vision_pad|>")],
        bos=None, eos="<|im_end|>", unk=None, pad="<|endoftext|>", adds_bos=False, template=QWEN25_TEMPLATE,
        marked=QWEN25_MARKED, stop=["<|im_end|>", "<|endoftext|>"], document_end="<|endoftext|>",
        end_of_turn="<|im_end|>", system_role=True, config=dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": Family(
        "qwen3", "qwen3", [(t, True, False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                     "<|fim_pad|>", "<|vision_pad|>")]
        + [("<think>", False, False), ("</think>", False, False)],
        bos=None, eos="<|im_end|>", unk=None, pad="<|endoftext|>", adds_bos=False, template=QWEN3_TEMPLATE,
        marked=QWEN3_MARKED, stop=["<|im_end|>", "<|endoftext|>"], document_end="<|endoftext|>",
        end_of_turn="<|im_end|>", system_role=True, config=dict(num_key_value_heads=2, head_dim=8)),
    "gemma2": Family(
        "gemma2", "gemma2", [(t, True, False) for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>",
                                                       "<end_of_turn>")],
        bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", adds_bos=True, template=GEMMA2_TEMPLATE,
        marked=GEMMA2_MARKED, stop=["<eos>", "<end_of_turn>"], document_end="<eos>", end_of_turn="<end_of_turn>",
        system_role=False,
        config=dict(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                    final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                    layer_types=["sliding_attention", "full_attention"])),
    "gemma3": Family(
        "gemma3", "gemma3_text", [(t, True, False) for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>",
                                                            "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                                                            "<image_soft_token>")],
        bos="<bos>", eos="<eos>", unk="<unk>", pad="<pad>", adds_bos=True, template=GEMMA3_TEMPLATE,
        marked=GEMMA3_MARKED, stop=["<eos>", "<end_of_turn>"], document_end="<eos>", end_of_turn="<end_of_turn>",
        system_role=True,
        config=dict(num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=None)),
    "phi3": Family(
        "phi3", "phi3", [("<unk>", True, False), ("<s>", True, False), ("</s>", False, True),
                         ("<|endoftext|>", True, False), ("<|assistant|>", True, True), ("<|placeholder1|>", True, True),
                         ("<|system|>", True, True), ("<|end|>", True, True), ("<|user|>", True, True)],
        bos="<s>", eos="<|endoftext|>", unk="<unk>", pad="<|endoftext|>", adds_bos=False, template=PHI3_TEMPLATE,
        marked=PHI3_MARKED, stop=["<|endoftext|>", "<|assistant|>", "<|end|>"], document_end="<|endoftext|>",
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
    family = FAMILIES[name]
    tokenizer = build_tokenizer(family)
    model = build_model(family, tokenizer)
    model.save_pretrained(folder)
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
