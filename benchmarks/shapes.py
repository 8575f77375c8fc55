"""Random-init models of real architectures, a tokenizer that needs no download, synthetic chat rows and the
machine's measured matmul peak: what the speed benchmarks share. Nothing here is downloaded or trained for real."""

from __future__ import annotations

import random
import time

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The two shapes of the anchors (Llama architecture, as SmolLM2 is), plus a tiny one for a quick CPU run.
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),
}  # fmt: skip
WORDS = [
    "the",
    "a",
    "model",
    "answer",
    "question",
    "helpful",
    "code",
    "year",
    "deployment",
    "training",
    "safe",
    "data",
    "learn",
    "write",
    "list",
    "why",
    "how",
]


def random_model(shape: str, device: str, dtype: torch.dtype, attention: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, attn_implementation=attention)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def tokenizer_for(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the synthetic words, so that any model shape can read its ids."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 400),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML)  # fmt: skip


def chat_rows(n: int, seed: int = 0, prompt_words: tuple[int, int] = (8, 60), answer_words: tuple[int, int] = (8, 80)):
    """Chat rows of varied length, as a real SFT mix has (that spread is what padding wastes)."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    def row() -> dict:
        user, answer = text(*prompt_words), text(*answer_words)
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}

    return Dataset.from_list([row() for _ in range(n)])


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int = 4096, repeats: int = 10) -> float:
    """The measured dense matmul rate of this device and dtype: the denominator of MFU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_parameters(model: torch.nn.Module) -> int:
    """N in MFU's 6·N·tokens: the weights a token is multiplied by. The input embedding is a lookup, not a matmul,
    unless it is tied to the output head (then it counts once, as the head). Attention's own FLOPs are left out."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight  # type: ignore[operator, union-attr]
    tied = model.get_output_embeddings().weight is embedding  # type: ignore[operator, union-attr]
    return total if tied else total - embedding.numel()
