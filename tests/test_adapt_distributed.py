"""Adaptation under torchrun with 2 processes (gloo on CPU): DDP as in the paper."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file


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
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["world_size"] == 2
    assert manifest["metrics"]["steps"] == 3
