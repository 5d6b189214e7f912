"""Training under data parallelism for real: `accelerate launch` with 2 CPU processes (gloo),
using distill/slurm/accelerate/ddp.yaml, matches a single-process run step for step.

The comparison is fair: 2 processes x 4 rows per step against 1 process x 8 rows, the same
global batch; accelerate hands each process one half of the same shuffled batch. The objective is
sft+kd, so both loss terms (TRL's cross-entropy and distill's divergence on the teacher's captured
distributions, with its own token normalisation) are checked across processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli, write_recipe

KD = ("generate.logprobs=5", "train.objective=sft+kd")


@pytest.fixture(scope="module")
def filtered_run(tiny_model, tmp_path_factory):
    """A run with generate and filter done: what the train stage reads."""
    folder = tmp_path_factory.mktemp("ddp")
    recipe = write_recipe(folder, tiny_model)
    run = folder / "base"
    for stage in ("generate", "filter"):
        proc = run_cli(stage, recipe, *KD, "--run-dir", run)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, recipe, run


def _train(folder, recipe, base, name: str, launcher: list[str], *overrides: str) -> dict:
    run = folder / name
    shutil.copytree(base, run)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*launcher, "-m", "distill.cli", "train", str(recipe), *KD, *overrides, "--run-dir", str(run)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return {"run": run, "log": json.loads((run / "train" / "log.json").read_text()),
            "marker": json.loads((run / "train" / "_COMPLETE.json").read_text())}


def test_two_process_ddp_matches_one_process_loss_trajectory(filtered_run):
    folder, recipe, base = filtered_run
    single = _train(folder, recipe, base, "single", [sys.executable], "train.batch_size=8")
    ddp = _train(folder, recipe, base, "ddp", [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "distill" / "slurm" / "accelerate" / "ddp.yaml"),
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    ], "train.batch_size=4")

    # the record the model card's batch line reads: 8 rows per update either way
    assert (single["marker"]["summary"]["processes"], single["marker"]["summary"]["global_batch"]) == (1, 8)
    assert (ddp["marker"]["summary"]["processes"], ddp["marker"]["summary"]["global_batch"]) == (2, 8)
    # 4 rows per process per step: one process alone would take twice the steps
    assert ddp["log"]["steps"] == single["log"]["steps"] and len(single["log"]["steps"]) >= 3
    assert ddp["log"]["losses"] == pytest.approx(single["log"]["losses"], rel=1e-4)
    assert ddp["log"]["kd_losses"] == pytest.approx(single["log"]["kd_losses"], rel=1e-3)
    assert ddp["log"]["ce_losses"] == pytest.approx(single["log"]["ce_losses"], rel=1e-4)
    assert ddp["log"]["losses"][-1] < ddp["log"]["losses"][0]  # it learned something
    # the main process alone wrote the adapter and the completion marker
    assert ddp["marker"]["summary"]["rows"] == single["marker"]["summary"]["rows"]
    assert (ddp["run"] / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (ddp["run"] / "train" / "adapter.tmp").exists()
