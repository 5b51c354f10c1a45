"""Adaptation under torchrun with 2 processes (gloo on CPU): DDP as in the paper."""

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import adapt_ranks

HELPERS = os.path.dirname(adapt_ranks.__file__)


@pytest.mark.distributed
def test_two_ranks_read_different_data_and_end_with_identical_adapters(tmp_path, tiny_model_dir):
    texts = [f"Documento numero {i}: il gatto dorme sul divano mentre piove su Roma." for i in range(40)]
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "llamantino", "adapt", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
           "--max-steps", "3", "--max-length", "48", "--batch-size", "2", "--debug-rank-records"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["data_sha256"] != ranks[1]["data_sha256"]
    assert ranks[0]["adapter_sha256"] == ranks[1]["adapter_sha256"]
    # The saved adapter is the one both ranks hold.
    saved = load_file(str(out / "adapter_model.safetensors"))
    digest = hashlib.sha256()
    for name, tensor in sorted(saved.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    assert digest.hexdigest() == ranks[0]["adapter_sha256"]
    # ... and training moved it: PEFT starts every LoRA B at zero, an optimizer step moves it.
    b = [t for name, t in saved.items() if "lora_B" in name]
    assert b and all(t.abs().max() > 0 for t in b)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["world_size"] == 2
    assert manifest["metrics"]["steps"] == 3


@pytest.mark.distributed
def test_two_ranks_update_as_one_process_accumulating_the_same_micro_batches(tmp_path, tiny_model_dir):
    """The same global batches (rank r's micro-batch = the r-th accumulated one) give the same
    adapter on 2 ranks as on one process with accumulation 2, though the ranks' micro-batches
    hold different numbers of target tokens: the loss is a mean over the global batch's targets."""
    data = tmp_path / "unused.jsonl"
    data.write_text(json.dumps({"text": "non letto: le righe sono fisse"}) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HELPERS, "adapt_ranks.py"), str(tiny_model_dir), str(data), str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = adapt_ranks.run_fixed(str(tiny_model_dir), str(data), str(tmp_path / "one"))["metrics"]
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())["metrics"]
    assert (one["world_size"], one["gradient_accumulation"]) == (1, 2)
    assert (two["world_size"], two["gradient_accumulation"]) == (2, 1)
    # The micro-batches really differ in targets (else per-rank and global means coincide).
    from llamantino.data.packing import collate

    step = adapt_ranks.global_batches()[0]
    targets = [collate(micro, adapt_ranks.LENGTH, 0).target_tokens for micro in step]
    assert targets[0] > 2 * targets[1], targets
    losses = [[float(row["loss"]) for row in _csv(tmp_path / run / "metrics.csv")] for run in ("one", "two")]
    assert len(losses[0]) == adapt_ranks.STEPS and losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0)
    a, b = (load_file(str(tmp_path / run / "adapter_model.safetensors")) for run in ("one", "two"))
    assert a.keys() == b.keys()
    lora_b = [name for name in a if "lora_B" in name]
    assert lora_b and all(a[name].abs().max() > 1e-4 for name in lora_b)  # the steps moved every adapter
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def _csv(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.distributed
def test_a_refusal_on_rank_0_stops_every_rank_with_the_same_line(tmp_path, tiny_model_dir):
    """Rank 0 refuses the output folder (it holds a file no llamantino run wrote): the other
    rank must not wait in a collective; both exit with the same one line, nothing written."""
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"text": f"Documento {i}: il gatto dorme."}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "llamantino", "adapt", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
           "--max-steps", "2", "--max-length", "48", "--batch-size", "2", "--overwrite"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    # Both ranks raise the same error; torchrun may stop rank 1 before it prints (it ends the
    # other ranks once one fails), so every line printed must be that one line.
    errors = re.findall(r"error: .*?choose an empty or new folder", proc.stderr)
    assert errors and all(e == errors[0] for e in errors), proc.stderr[-3000:]
    assert errors[0] == (f"error: {out}: output folder is not empty and holds no llamantino run (notes.txt); "
                         "llamantino replaces only its own outputs: choose an empty or new folder")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "the user's own file\n"


def _refusing_rank(rank: int, store: str, results: str) -> None:
    import torch.distributed as dist

    from llamantino.core import distributed
    from llamantino.core.errors import LlamantinoError

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def refuse():
        raise LlamantinoError("run: refused on rank 0")

    try:
        distributed.on_rank0(refuse)
        outcome = "returned"
    except LlamantinoError as exc:
        outcome = f"error: {exc}"
    with open(f"{results}.{rank}", "w") as handle:
        handle.write(outcome)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_on_rank0_hands_a_refusal_to_every_rank(tmp_path):
    """Without torchrun's agent to end the job (e.g. one launcher per node), a rank left
    waiting would hang: the refusal itself must reach it."""
    import torch.multiprocessing as mp

    results = tmp_path / "result"
    mp.start_processes(_refusing_rank, args=(str(tmp_path / "store"), str(results)), nprocs=2, join=True,
                       start_method="spawn")
    assert [(tmp_path / f"result.{r}").read_text() for r in (0, 1)] == ["error: run: refused on rank 0"] * 2


@pytest.mark.distributed
def test_resuming_on_another_number_of_processes_is_refused_in_one_line(tmp_path, tiny_model_dir, capsys):
    """Each rank reads its own stripe of the data, so a checkpoint's data positions hold for the
    number of processes that wrote it only: a resume on another number is refused, with the same
    one line on every rank, and the checkpoint is kept for a resume with the right number."""
    from llamantino.cli import main

    from helpers.adapt import adapt_args, corpus

    data = corpus(tmp_path, 24)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    two, one = tmp_path / "two", tmp_path / "one"

    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "llamantino", *adapt_args(tiny_model_dir, data, out, *extra)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)

    def snapshot(out):
        return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    # Written by 2 processes, resumed on 1.
    proc = torchrun(two, "--stop-after-steps", "1")
    # A stopped stage exits 3 on every rank; torchrun reports it as a failed worker.
    assert proc.returncode != 0 and "exitcode: 3" in proc.stderr, proc.stderr[-3000:]
    before = snapshot(two)
    capsys.readouterr()
    assert main(adapt_args(tiny_model_dir, data, two, "--resume")) == 2
    folder = two / "checkpoints" / "step-0000001"
    errors = re.findall(r"^error: .*$", capsys.readouterr().err, flags=re.M)  # after the loading bars
    assert errors == [f"error: {folder}: written by 2 process(es), this run has 1; resume with 2 "
                      "(its data state is per process)"]
    assert snapshot(two) == before

    # Written by 1 process, resumed on 2: both ranks refuse with the same line.
    assert main(adapt_args(tiny_model_dir, data, one, "--stop-after-steps", "1")) == 3  # stopped
    before = snapshot(one)
    proc = torchrun(one, "--resume")
    assert proc.returncode != 0
    errors = re.findall(r"^error: .*$", proc.stderr, flags=re.M)
    folder = one / "checkpoints" / "step-0000001"
    assert errors and set(errors) == {f"error: {folder}: written by 1 process(es), this run has 2; resume with 1 "
                                      "(its data state is per process)"}, proc.stderr[-3000:]
    assert snapshot(one) == before
