"""Experiment tracking: with `train.report_to`, the trainer's loss and every figure of the evaluation report
reach the tracker, offline, in one run per run directory, read back here from the tracker's own files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARES_FINISHED_RUN, run_cli

from distill.run_dir import RunDir

pytestmark = SHARES_FINISHED_RUN  # one worker builds the shared run (conftest.py)

TRACKERS = "train.report_to=[tensorboard, wandb]"


@pytest.fixture(scope="module")
def tracked(finished_run, tmp_path_factory):
    """The shared finished run, copied, its training and evaluation redone with both trackers, then a compare."""
    folder = tmp_path_factory.mktemp("tracked")
    shutil.copytree(finished_run[0] / "runs", folder / "runs")
    run = RunDir(folder / "runs" / "tiny")
    for stage in ("train", "evaluate"):
        result = run_cli(stage, run.root, TRACKERS, "--force", cwd=folder)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    result = run_cli("compare", "base", run.root, "--out", folder / "compared", "--set", TRACKERS, cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run, json.loads((folder / "compared" / "report.json").read_text())


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wandb_history(folder: Path) -> dict[str, list[dict]]:
    """Run id -> the rows logged to it, from W&B's offline files (LevelDB log blocks of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    runs: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        raw, pos, buf, run_id = path.read_bytes(), 7, b"", None  # 7: the ":W&B" header
        while pos + 7 <= len(raw):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a record header is padding
                pos += 32768 - pos % 32768
                continue
            n, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
            chunk, pos = raw[pos + 7:pos + 7 + n], pos + 7 + n
            buf = chunk if kind in (1, 2) else buf + chunk  # full / first, else middle / last
            if kind not in (1, 4):
                continue
            record = pb.Record()
            record.ParseFromString(buf)
            if record.WhichOneof("record_type") == "run":
                run_id = record.run.run_id
            elif record.WhichOneof("record_type") == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                runs.setdefault(run_id, []).append(row)
    return runs


def test_tensorboard_has_the_loss_of_every_logged_training_step(tracked):
    run, _ = tracked
    logged = json.loads((run.stage("train") / "log.json").read_text())
    loss = tensorboard_scalars(run.root / "tracking" / "tensorboard")["train/loss"]
    assert [step for step, _ in loss] == logged["steps"]
    assert [value for _, value in loss] == pytest.approx(logged["losses"], rel=1e-5)


def test_tensorboard_has_every_score_and_difference_of_the_evaluation_report(tracked):
    run, _ = tracked
    report = json.loads((run.stage("evaluate") / "report.json").read_text())
    scalars = tensorboard_scalars(run.root / "tracking" / "tensorboard")
    last_step = run.read_marker("train")["summary"]["steps"]
    plural = report["sets"]["plural"]
    assert scalars["eval/plural/exact_match/base"] == [(0, pytest.approx(plural["models"]["base"]["score"]))]
    # the trained student sits at its last training step, on the same axis as the loss
    assert scalars["eval/plural/exact_match/student"] == [(last_step, pytest.approx(plural["models"]["student"]["score"]))]
    versus = plural["vs_base"]["student"]
    for suffix, key in (("", "delta"), ("_low", "low"), ("_high", "high")):
        assert scalars[f"eval/plural/exact_match/student/vs_base{suffix}"] == [(last_step, pytest.approx(versus["overall"][key]))]
    for where, x in versus["slices"].items():
        assert scalars[f"eval/plural/exact_match/student/slice/{where}/vs_base"] == [(last_step, pytest.approx(x["delta"]))]
    assert scalars["eval/degraded_findings"] == [(last_step, len(report["degraded"]))]


def test_compare_logs_its_figures_to_the_same_tensorboard_run(tracked):
    run, compared = tracked
    scalars = tensorboard_scalars(run.root / "tracking" / "tensorboard")
    name = next(m for m in compared["models"] if m != "base")
    assert scalars[f"compare/plural/exact_match/{name}/vs_base"] == [
        (0, pytest.approx(compared["sets"]["plural"]["vs_base"][name]["overall"]["delta"]))]
    assert "train/loss" in scalars and "eval/plural/exact_match/student" in scalars


def test_wandb_gets_training_and_evaluation_in_one_offline_run(tracked):
    run, _ = tracked
    report = json.loads((run.stage("evaluate") / "report.json").read_text())
    history = wandb_history(run.root / "tracking")
    assert len(history) == 1, history.keys()  # train, evaluate and compare processes: one run id
    rows = next(iter(history.values()))
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses == pytest.approx(json.loads((run.stage("train") / "log.json").read_text())["losses"], rel=1e-5)
    student = [r for r in rows if "eval/plural/exact_match/student" in r]
    assert [(r["eval/step"], r["eval/plural/exact_match/student"]) for r in student] == [
        (run.read_marker("train")["summary"]["steps"], pytest.approx(report["sets"]["plural"]["models"]["student"]["score"]))]
    assert any("compare/plural/exact_match/base" in r for r in rows)


def test_an_unknown_tracker_is_refused_before_any_work(tmp_path, tiny_recipe):
    result = run_cli("validate", tiny_recipe, "train.report_to=[mlflow]", cwd=tmp_path)
    assert result.returncode == 2 and "train.report_to" in result.stderr and "tensorboard" in result.stderr
    assert "Traceback" not in result.stderr
