"""Hub models: which files distill fetches, where it finds them offline, and what their identity costs.

A repository may hold the same weights three times (safetensors shards, Llama's original/*.pth, GGUF files): distill
asks the hub for the files vLLM and transformers read and nothing else. Offline, the model comes from the Hugging
Face cache, laid out here by hand as a download leaves it (blobs/ named by their hashes, snapshots/COMMIT/ links to
them, refs/main); there the weights' sha256 is the blob's name, so a model's identity costs no hashing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants

from distill.errors import UserError
from distill.models import identity
from distill.models.identity import hub_cache_sha256, model_identity
from distill.models.resolve import download_command, folder_problems, model_files, resolve_model
from distill.recipe import ModelSpec

COMMIT = "c0ffee" + "0" * 34

# Meta-Llama-3.1-8B-Instruct as the hub lists it: safetensors shards with their index, and the original checkpoint.
LLAMA_LISTING = [
    ".gitattributes", "LICENSE", "README.md", "USE_POLICY.md", "config.json", "generation_config.json",
    "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors", "model.safetensors.index.json", "original/consolidated.00.pth",
    "original/params.json", "original/tokenizer.model", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json",
]
LLAMA_SHARDS = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]


def git_blob_sha1(data: bytes) -> str:
    """The name the cache gives a small file kept in git (not LFS): git's blob id, 40 hex digits."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_model(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT,
                listing: list[str] | None = None) -> Path:
    """Put `files` into a hub cache under `cache` as `snapshot_download` leaves them, and return the snapshot folder.
    Weights (LFS files) are stored as blobs/<sha256>, other files as blobs/<git sha1>; `listing`: the repository's
    files as the cache records them (trees/COMMIT.json), which may name files the snapshot lacks."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        lfs = name.endswith((".safetensors", ".bin"))
        blob = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        (repo / "blobs" / blob).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2)) / "blobs" / blob)
    if listing is not None:
        (repo / "trees").mkdir()
        (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": {
            name: {"size": 1, "blob_id": "0" * 40} for name in listing}}))
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that huggingface_hub and distill read, offline."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


# --------------------------------------------------------------------------- what is fetched


def test_only_the_files_vllm_and_transformers_read_are_fetched():
    shards = lambda index: LLAMA_SHARDS  # noqa: E731 -- model.safetensors.index.json's weight_map
    assert model_files(LLAMA_LISTING, shards_of=shards) == [
        "README.md", "config.json", "generation_config.json", *LLAMA_SHARDS, "model.safetensors.index.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]  # no original/*, no licence


def test_pytorch_bin_weights_are_fetched_only_where_a_model_has_no_safetensors():
    both = ["config.json", "tokenizer.json", "model.safetensors", "pytorch_model.bin", "model.gguf", "training_args.bin"]
    assert model_files(both) == ["config.json", "model.safetensors", "tokenizer.json"]
    bins = ["config.json", "tokenizer.json", "pytorch_model.bin", "training_args.bin", "model-q4.gguf"]
    assert model_files(bins) == ["config.json", "pytorch_model.bin", "tokenizer.json"]


def test_an_index_keeps_other_files_of_the_same_format_out():
    """Mistral-7B-Instruct-v0.3 holds its weights twice, as shards and as consolidated.safetensors (Mistral's own
    format); the index names the shards, which are all transformers and vLLM read."""
    listing = ["config.json", "tokenizer.json", "consolidated.safetensors", "model.safetensors.index.json",
               "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "params.json"]
    files = model_files(listing, shards_of=lambda index: ["model-00001-of-00002.safetensors",
                                                          "model-00002-of-00002.safetensors"])
    assert "consolidated.safetensors" not in files and "params.json" not in files
    assert "model-00002-of-00002.safetensors" in files and "model.safetensors.index.json" in files


def test_code_shipped_with_a_model_is_fetched_only_where_the_recipe_trusts_it():
    listing = ["config.json", "model.safetensors", "tokenizer.json", "modeling_x.py", "configuration_x.py"]
    assert "modeling_x.py" not in model_files(listing)
    assert {"modeling_x.py", "configuration_x.py"} <= set(model_files(listing, trust_remote_code=True))


def test_online_resolution_asks_the_hub_for_those_files_only(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {f"layer.{i}": s for i, s in enumerate(LLAMA_SHARDS)}}))
    asked = {}

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **_):
        asked.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(cache_model(hub, repo_id, {"config.json": b"{}"}))

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, revision=None: LLAMA_LISTING)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, revision=None: str(index))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    folder = resolve_model(ModelSpec(hub="meta-llama/Llama-3.1-8B-Instruct"))
    assert folder == hub / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / COMMIT
    assert asked["revision"] == "main"  # a branch, so that the cache records refs/main for offline use
    assert sorted(asked["allow_patterns"]) == model_files(LLAMA_LISTING, shards_of=lambda _: LLAMA_SHARDS)
    assert not any(p.startswith("original/") or p.endswith((".pth", ".gguf")) for p in asked["allow_patterns"])


# --------------------------------------------------------------------------- offline, from the cache


def test_offline_a_cached_model_resolves_by_branch_or_commit(hub, tiny_model):
    snapshot = cache_model(hub, "org/tiny", folder_files(tiny_model))
    assert resolve_model(ModelSpec(hub="org/tiny")) == snapshot
    assert resolve_model(ModelSpec(hub="org/tiny", revision=COMMIT)) == snapshot
    assert folder_problems(snapshot) == []


def test_a_model_missing_from_the_cache_is_named_with_the_command_that_fetches_it(hub):
    with pytest.raises(UserError) as e:
        resolve_model(ModelSpec(hub="org/absent", revision="v2"))
    message = str(e.value)
    assert "'org/absent' (revision v2) is not in the local Hugging Face cache" in message and "\n" not in message
    assert message.endswith(download_command(ModelSpec(hub="org/absent", revision="v2")))
    assert download_command(ModelSpec(hub="org/absent", revision="v2")).startswith(
        "hf download org/absent --revision v2 --include '*.json' --include '*.safetensors'")
    assert "--exclude 'original/*'" in message and "--exclude '*.pth'" in message


def test_the_cache_blob_names_are_the_weights_sha256_so_identity_hashes_no_weights(hub, tiny_model, monkeypatch, tmp_path):
    snapshot = cache_model(hub, "org/tiny", folder_files(tiny_model))
    weights = snapshot / "model.safetensors"
    # the shortcut is sound: the name the cache gives the blob is the sha256 of its bytes
    assert hub_cache_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    hashed = []
    real_hash_file = identity.hash_file
    monkeypatch.setattr(identity, "hash_file", lambda path, *a: hashed.append(Path(path).name) or real_hash_file(path, *a))
    cached = model_identity(snapshot, "org/tiny")
    assert "model.safetensors" not in hashed  # read from the blob's name
    # the same files in a plain folder of its own (the suite's tiny model may have been hashed, and remembered, before)
    plain = model_identity(shutil.copytree(tiny_model, tmp_path / "plain"), "org/tiny")
    assert "model.safetensors" in hashed
    assert cached["weights_sha256"] == plain["weights_sha256"]
    assert cached["tokenizer_sha256"] == plain["tokenizer_sha256"] and cached["config_sha256"] == plain["config_sha256"]


def test_files_the_cache_names_by_git_sha1_or_plain_files_are_hashed(hub, tiny_model):
    snapshot = cache_model(hub, "org/tiny", folder_files(tiny_model))
    assert hub_cache_sha256(snapshot / "config.json") is None  # a small git file: blobs/<sha1>, 40 hex digits
    assert hub_cache_sha256(tiny_model / "model.safetensors") is None  # not a link into a cache


# --------------------------------------------------------------------------- folders nothing could load


@pytest.mark.parametrize("plant, expected", [
    ({}, "is an empty folder"),
    ({"weights.txt": b"x"}, "has no config.json (it holds weights.txt)"),
    ({"config.json": b"{'model_type': 'llama'"}, "has a config.json that is not valid JSON (line 1, column 2"),
    ({"config.json": b"[]"}, "has a config.json that is not a JSON object"),
], ids=["empty", "no-config", "bad-json", "not-an-object"])
def test_a_folder_nothing_could_load_is_refused_with_one_line(tmp_path, plant, expected):
    folder = tmp_path / "model"
    folder.mkdir()
    for name, data in plant.items():
        (folder / name).write_bytes(data)
    with pytest.raises(UserError) as e:
        resolve_model(ModelSpec(path=str(folder)))
    assert str(e.value).startswith(f"{folder} {expected}") and "\n" not in str(e.value)


def test_a_folder_without_weights_or_tokenizer_or_with_shards_missing_says_each(tmp_path, tiny_model):
    folder = shutil.copytree(tiny_model, tmp_path / "model")
    (folder / "model.safetensors").unlink()
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").write_text("{")
    problems = folder_problems(folder)
    assert "has no weights (*.safetensors or *.bin)" in problems
    assert "has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json, ...)" in problems
    assert any(p.startswith("has a tokenizer_config.json that is not valid JSON") for p in problems)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                                                    "b": "model-00002-of-00002.safetensors"}}))
    shutil.copy(tiny_model / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    assert "lacks 1 weight file(s) its index names (model-00002-of-00002.safetensors)" in folder_problems(folder)
