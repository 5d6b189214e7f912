"""`distill export`: the trained student as a folder others load, and `--push-to-hub` uploading it with its card.

The runs are written by hand up to training (a real adapter, or a real full model for train.method full) and
documented by the real document stage. The Hub is a local HTTP server that answers as the Hub's API does and records
every request, so the upload is checked up to the bytes sent, without a network.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import PLURAL, run_cli, write_recipe
from test_cards import _report

from distill import rows as C
from distill.errors import UserError
from distill.pipeline import save_resolved_recipe
from distill.provenance.stage import run_document
from distill.recipe import load_recipe
from distill.run_dir import RunDir, hash_file, write_json, write_parquet, write_text


def documented_run(folder: Path, tiny_model: Path, overrides: list[str], full: bool = False) -> RunDir:
    """A run whose filter, evaluate and train outputs are written by hand (train/adapter: a real LoRA adapter, or with
    `full` the whole trained model), then documented, as `distill export` finds a finished run."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = load_recipe(write_recipe(folder, tiny_model), overrides)
    run = RunDir(folder / "runs" / "tiny")
    save_resolved_recipe(recipe, run)  # what export reads back, as `distill run` leaves it
    examples = json.loads(PLURAL.read_text())["examples"]
    rows = [{C.ID: f"r{i}", C.INPUT: e["input"], C.SLICE: "regular", C.COMPLETION: e["target"], C.KEPT: True,
             C.REJECTED_BY: None, C.REASON: None} for i, e in enumerate(examples[:40])]
    write_parquet(run.filtered, rows)
    run.mark_complete("filter", "fp", {"rows": 40, "kept": 40, "rejected": 0, "funnel": []})
    write_text(run.heldout, "".join(json.dumps({C.INPUT: e["input"], C.REFERENCE: e["target"], C.REFERENCES: [e["target"]]})
                                    + "\n" for e in examples[100:140]))
    write_json(run.eval_report, _report())
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if not full:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(run.adapter)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(run.adapter)
    write_json(run.adapter / "training_data.json", {"rows_file": str(run.filtered), "rows_sha256": hash_file(run.filtered),
                                                    "rows_used": 40, "recipe_name": "tiny"})
    run.mark_complete("train", "fp", {"rows": 40, "steps": 5, "first_loss": 6.1, "last_loss": 0.4})
    run_document(recipe, run)
    return run


class Hub:
    """A stand-in for the Hub's API on 127.0.0.1: it answers the calls huggingface_hub makes to create a repository
    and upload a folder (every file uploaded inline), and keeps each request as (method, path, headers, body)."""

    def __init__(self, refuse_with: int | None = None):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.refuse_with = refuse_with
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.requests.append(("GET", self.path, dict(self.headers), b""))
                self._reply(404, {"error": "not here"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if hub.refuse_with:
                    return self._reply(hub.refuse_with, {"error": "Invalid credentials in Authorization header"})
                if self.path == "/api/repos/create":
                    asked = json.loads(body)
                    return self._reply(200, {"url": f"{hub.url}/{asked['organization']}/{asked['name']}"})
                if self.path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in self.path:  # every file inline in the commit, none through LFS
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if "/commit/" in self.path:
                    repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                    return self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'c' * 40}", "commitOid": "c" * 40})
                self._reply(404, {"error": "not here"})

            def _reply(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posted(self, path_part: str) -> list[tuple[str, dict, bytes]]:
        return [(p, h, b) for m, p, h, b in self.requests if m == "POST" and path_part in p]

    def committed_files(self) -> dict[str, bytes]:
        """The files of the one commit sent: huggingface_hub's NDJSON commit, each file's bytes base64 inline."""
        (_, _, body), = self.posted("/commit/")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        return {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}


@pytest.fixture
def hub():
    server = Hub()
    yield server
    server.server.shutdown()


def hub_env(hub: Hub) -> dict:
    """The CLI's environment pointed at the stand-in (the suite runs with HF_HUB_OFFLINE=1, which refuses uploads)."""
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}


def test_push_to_hub_creates_the_repository_and_uploads_the_export_with_its_card(tiny_model, tmp_path, hub):
    from huggingface_hub import ModelCard

    run = documented_run(tmp_path, tiny_model, [])
    result = run_cli("export", run.root, "--push-to-hub", "me/tiny-student", "--private", "--token", "hf_test_token",
                     cwd=tmp_path, env=hub_env(hub))
    assert result.returncode == 0, result.stderr[-3000:]
    out = (run.root / "export" / "adapter").resolve()
    assert f"pushed: {hub.url}/me/tiny-student (commit cccccccccccc)" in result.stdout

    # the repository, private, with the token given
    (_, headers, body), = hub.posted("/api/repos/create")
    assert json.loads(body) == {"name": "tiny-student", "organization": "me", "type": "model", "visibility": "private"}
    assert headers["authorization"] == "Bearer hf_test_token"
    # one commit to main with every file of the export but export.json (it records this machine's paths)
    assert [p for p, _, _ in hub.posted("/commit/")] == ["/api/models/me/tiny-student/commit/main"]
    sent = hub.committed_files()
    assert set(sent) == {p.name for p in out.iterdir()} - {"export.json"}
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(sent)
    assert all(sent[name] == (out / name).read_bytes() for name in sent)
    # the card, checked by the Hub's metadata validation before the upload, loads from the repository
    (_, _, validated), = hub.posted("/api/validate-yaml")
    assert json.loads(validated)["content"] == (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "unknown" and card.data.library_name == "peft" and "lora" in card.data.tags
    assert 'PeftModel.from_pretrained(base, "me/tiny-student")' in card.text
    record = json.loads((out / "export.json").read_text())
    assert record["pushed"] == {"repo": "me/tiny-student", "url": f"{hub.url}/me/tiny-student", "commit": "c" * 40,
                                "commit_url": f"{hub.url}/me/tiny-student/commit/{'c' * 40}", "private": True}


def test_a_full_fine_tuning_run_exports_its_model_folder(tiny_model, tmp_path, hub):
    """train.method full: train/adapter holds a whole model; export writes it as a model folder (no merge, no PEFT),
    with the run's card describing full fine-tuning, and uploads it the same way."""
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    run = documented_run(tmp_path, tiny_model, ["train.method=full"], full=True)
    result = run_cli("export", run.root, "--merge", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the run trained every weight (train.method: full): its model has no adapter to merge" in result.stderr

    result = run_cli("export", run.root, "--push-to-hub", "me/tiny-full", cwd=tmp_path, env=hub_env(hub))
    assert result.returncode == 0, result.stderr[-3000:]
    out = (run.root / "export" / "model").resolve()
    assert f"model: {out}" in result.stdout and f"serve: vllm serve {out} --served-model-name tiny-student" in result.stdout
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    assert not (out / "adapter_config.json").exists() and not (out / "training_args.bin").exists()
    AutoModelForCausalLM.from_pretrained(out)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "full-fine-tune" in card.data.tags
    assert card.text.lstrip().startswith("# tiny: student (full fine-tuning)")
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-full")' in card.text
    assert [e.metric_value for e in card.data.eval_results] == [0.45, 0.5]  # the run's evaluation travels with it
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.committed_files())


def test_a_push_the_hub_refuses_is_one_line_naming_the_repository(tiny_model, tmp_path):
    refusing = Hub(refuse_with=401)
    try:
        run = documented_run(tmp_path, tiny_model, [])
        result = run_cli("export", run.root, "--push-to-hub", "me/tiny-student", cwd=tmp_path, env=hub_env(refusing))
    finally:
        refusing.server.shutdown()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: --push-to-hub me/tiny-student: the Hub refused: ")
    assert error.endswith("(log in with `hf auth login`, set HF_TOKEN, or pass --token)")
    assert (run.root / "export" / "adapter" / "README.md").is_file()  # the export itself is written, and kept

    # a malformed repository id, or --private without a push, is refused before any work
    for args, message in ((["--push-to-hub", "not a repo"], "--push-to-hub 'not a repo': not a Hub repository id"),
                          (["--private"], "--private and --token are settings of --push-to-hub REPO_ID")):
        result = run_cli("export", run.root, *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_offline_mode_refuses_the_upload_plainly(tiny_model, tmp_path):
    from distill.export import push_to_hub

    with pytest.raises(UserError, match="--push-to-hub: HF_HUB_OFFLINE is set, so nothing can be uploaded"):
        push_to_hub(tmp_path, "me/tiny-student")  # the suite runs with HF_HUB_OFFLINE=1
