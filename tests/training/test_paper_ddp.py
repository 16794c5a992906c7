"""A two-process DDP run of paper training on the CPU (gloo), started the way a cluster starts it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from paper_training_support import assemble_tiny

TESTS = Path(__file__).resolve().parents[1]
WORKER = """
import hashlib, json, sys
import torch
sys.path.insert(0, {tests!r})
from paper_training_support import INSTRUCT, PAIRS, quick_config, world_samples
from codi2_agent.training.paper import PaperTrainer

torch.set_num_threads(1)
out = {out!r}
# 8 samples per stage: each process takes every other one, so their gradients differ
data = {{"align": world_samples(PAIRS * 2), "instruct": world_samples(INSTRUCT * 2)}}
trainer = PaperTrainer({model!r}, out, data, quick_config(save_every=1), progress=False)
final = trainer.train()
acc, model = trainer.accelerator, trainer.model
digest = hashlib.sha256()
for name, p in sorted(model.lm.named_parameters()):
    if "lora_" in name or "trainable_tokens" in name:
        digest.update(p.detach().float().numpy().tobytes())
for p in [*model.projectors.parameters(), *model.output_heads.parameters()]:
    digest.update(p.detach().float().numpy().tobytes())
report = dict(rank=acc.process_index, world=acc.num_processes, kind=str(acc.distributed_type),
              digest=digest.hexdigest(), final=str(final))
with open(f"{{out}}/rank-{{acc.process_index}}.json", "w") as f:
    json.dump(report, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_ddp_run_keeps_the_replicas_equal_and_writes_one_checkpoint(tmp_path):
    model_dir = assemble_tiny(tmp_path)
    out = tmp_path / "run"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), out=str(out), model=str(model_dir)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env)
    assert run.returncode == 0, run.stderr[-4000:]

    reports = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["world"]) for r in reports] == [(0, 2), (1, 2)]
    assert all(r["kind"] == "DistributedType.MULTI_CPU" for r in reports)
    # each process saw other samples; equal weights after training mean gradients were all-reduced
    assert reports[0]["digest"] == reports[1]["digest"]
    final = Path(reports[0]["final"])
    assert (final / "codi2_adapter.json").is_file() and (out / "instruct" / "done").exists()
    log = [json.loads(line) for line in (out / "instruct" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # one log line per step, from the main process only
