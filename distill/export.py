"""export: a trained student as others load it, merged into its base or as a vLLM-ready LoRA adapter.

`distill export RUN --merge` writes the base with the adapter merged in (`merge_and_unload`), saved in the base's
dtype with its tokenizer and a model card carrying the run's evaluation: transformers and vLLM load the folder
alone. Without `--merge` it writes the adapter folder as `vllm serve --enable-lora` loads it, with the same card, and
the command that serves base + adapter. A run that trained every weight (train.method full) has no adapter: its model
folder is written as it is. The target is a run directory or an adapter folder (a checkpoint, a copy).
`--push-to-hub REPO_ID` then uploads the folder (its card as README.md) through huggingface_hub.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from distill.errors import UserError
from distill.models.dtype import model_dtype, stored_dtype
from distill.models.merge import merge_adapter
from distill.run_dir import RunDir, hash_file, write_json, write_text

EXPORT_RECORD = "export.json"  # marks a folder this command wrote, so that exporting again may replace it
# PEFT's generic card (replaced by ours) and the trainer's pickled arguments (a pickle is code to whoever loads it).
ADAPTER_SKIP = ("README.md", "training_args.bin")
# A checkpoint's training state beside its weights: the optimizer, schedule, random states and step, for resuming only.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "trainer_state.json", "scaler.pt")


@dataclass
class Source:
    adapter: Path  # the adapter folder, or for a full fine-tuning run its model folder
    run: RunDir | None  # the run the adapter belongs to, when found
    final: bool  # the run's own train/adapter (its evaluation and cards are about this adapter)
    base_dir: Path
    base: dict  # the base model's identity (distill.models.identity)
    spec: object | None  # the recipe's ModelSpec of the student, when the run is known
    full: bool = False  # every weight trained (train.method full): a whole model, nothing to merge
    recipe: object | None = None  # the run's recipe, when the run is known


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _is_model(folder: Path) -> bool:
    """A whole model folder (config.json and no adapter): what train.method full saves where an adapter would be."""
    return (folder / "config.json").is_file() and not _is_adapter(folder)


def _run_of(adapter: Path) -> RunDir | None:
    """The run an adapter folder belongs to: a run directory above it (train/adapter, train/checkpoints/...), or the
    one its data manifest names."""
    for parent in list(adapter.parents)[:3]:
        if (parent / "recipe.yaml").is_file() and (parent / "train") in (adapter, *adapter.parents):
            return RunDir(parent)
    manifest = adapter / "data_manifest.json"
    if manifest.is_file():
        root = Path(json.loads(manifest.read_text()).get("run", {}).get("run_dir") or "")
        if root.is_dir() and (root / "recipe.yaml").is_file():
            return RunDir(root)
    return None


def _base_without_recipe(adapter: Path) -> tuple[Path, dict]:
    """The base an adapter records: training_data.json's identity (distill's adapters), else adapter_config.json's
    base_model_name_or_path (a local folder or a hub id in the local cache)."""
    from distill.models.identity import model_identity

    trained = adapter / "training_data.json"
    recorded = json.loads(trained.read_text()).get("base_model") if trained.is_file() else None
    if recorded and Path(recorded.get("path") or "").is_dir():
        return Path(recorded["path"]), model_identity(Path(recorded["path"]), recorded["name"], recorded.get("revision"))
    name = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not name:
        raise UserError(f"{adapter / 'adapter_config.json'}: names no base model (base_model_name_or_path)")
    if Path(name).is_dir():
        return Path(name), model_identity(Path(name), name)
    from distill.models.resolve import resolve_model
    from distill.recipe import ModelSpec

    folder = resolve_model(ModelSpec(hub=name))
    return folder, model_identity(folder, name)


def locate(target: str | Path) -> Source:
    """What to export: the adapter (or a full run's model), its run if any, and the base it was trained on."""
    target = Path(target).resolve()
    if (target / "recipe.yaml").is_file() and not _is_adapter(target):
        run = RunDir(target)
        if not (_is_adapter(run.adapter) or _is_model(run.adapter)):
            raise UserError(f"{target}: the run has no trained adapter ({run.adapter}/adapter_config.json) or model "
                            f"({run.adapter}/config.json): run `distill train` first")
        adapter = run.adapter.resolve()
    elif _is_adapter(target):
        adapter, run = target, _run_of(target)
    elif _is_model(target) and _run_of(target) is not None:  # a full run's model or one of its checkpoints
        adapter, run = target, _run_of(target)
    else:
        raise UserError(f"{target}: neither a run directory (recipe.yaml), an adapter folder (adapter_config.json), "
                        "nor the model folder of a full fine-tuning run (config.json, inside its run directory)")
    if run is None:
        base_dir, base = _base_without_recipe(adapter)
        return Source(adapter, None, False, base_dir, base, None)
    from distill.models.context import resolved_model
    from distill.recipe import load_recipe

    recipe = load_recipe(run.recipe)
    base_dir, base = resolved_model(recipe, "student")
    return Source(adapter, run, adapter == run.adapter.resolve(), base_dir, base, recipe.models.student,
                  full=_is_model(adapter), recipe=recipe)


def base_dtype(folder: Path) -> str:
    """The dtype the base's weights are stored in (config.json), so the merged folder is the size of its base."""
    return stored_dtype(folder) or "float32"


def serve_command(src: Source, out: Path, merged: bool, name: str) -> str:
    """The `vllm serve` command line for the exported folder (merged, or a full run's model) or for base + adapter."""
    if merged or src.full:
        return f"vllm serve {shlex.quote(str(out))} --served-model-name {shlex.quote(name)}"
    from distill.models.vllm_engine import VLLM_LORA_RANKS

    rank = int(json.loads((src.adapter / "adapter_config.json").read_text()).get("r") or 8)
    spec = src.spec
    hub = getattr(spec, "hub", None)
    parts = ["vllm", "serve", shlex.quote(hub or str(src.base_dir.resolve()))]
    if hub and spec.revision:
        parts += ["--revision", shlex.quote(spec.revision)]
    if spec is not None:
        dtype = model_dtype(spec, "student", src.base_dir).dtype  # as evaluated here: `dtype: auto` resolved on this machine
        parts += ["--dtype", dtype] + (["--trust-remote-code"] if spec.trust_remote_code else [])
    # vLLM takes only some ranks as --max-lora-rank; any adapter up to it is served.
    max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
    parts += ["--enable-lora", "--max-lora-rank", str(max_rank), "--lora-modules", shlex.quote(f"{name}={out}")]
    return " ".join(parts)


def _documented_context(src: Source) -> dict | None:
    """What the run's model card shows, when the adapter is the run's own and the card describes it as it is now."""
    if not src.final:
        return None
    context = src.run.stage("document") / "card_context.json"
    if not context.is_file():
        raise UserError(f"{context} is missing: the run was not documented (or by an older distill); "
                        f"run `distill document {src.run.root} --force` first")
    manifest = json.loads((src.run.root / "manifest.json").read_text())
    documented = manifest.get("outputs", {}).get("train", {}).get("files", {})
    for rel, sha in documented.items():
        path = src.run.root / rel
        if path.parent == src.run.adapter and (not path.is_file() or hash_file(path) != sha):
            raise UserError(f"{path} changed after the run was documented: its card would describe another "
                            f"adapter; run `distill document {src.run.root}` first")
    return json.loads(context.read_text())


def _card(src: Source, context: dict | None, export: dict) -> str:
    """The run's model card for this export when the adapter is the run's documented one; else a card that says why
    no evaluation comes with it."""
    from distill.provenance.cards import export_card, hub_base_model, model_card

    if context is not None:
        return model_card(context, export)
    what = "model" if src.full else "adapter"
    if src.run is not None:
        why = (f"No evaluation comes with this card: the run `{src.run.root}` documented and evaluated its final "
               f"{what} (`{src.run.adapter}`), not this one; `distill compare` measures it on the run's held-out items.")
    else:
        why = "No evaluation comes with this card: the adapter is not part of a documented distill run."
    return export_card(export["name"], hub_base_model(src.base), {**export, "why_no_evaluation": why}, export["license"])


def _license(src: Source) -> dict:
    """The exported student's license: its base model's, else the recipe's train.license, else unknown."""
    from distill.provenance.cards import student_license

    return student_license({"path": str(src.base_dir)}, getattr(getattr(src.recipe, "train", None), "license", None))


def _default_out(src: Source, merge: bool) -> Path:
    if src.run is None:
        raise UserError(f"{src.adapter}: not part of a distill run; name the output folder with --out")
    name = "model" if src.full else ("merged" if merge else "adapter")
    return src.run.root / "export" / (name if src.final else f"{src.adapter.name}-{name}")


def _copy_adapter(src: Source, tmp: Path) -> None:
    tmp.mkdir(parents=True)
    for path in sorted(src.adapter.iterdir()):
        if path.is_file() and path.name not in ADAPTER_SKIP and not path.name.startswith((".", "_")):
            shutil.copy2(path, tmp / path.name)
    config = json.loads((tmp / "adapter_config.json").read_text())
    hub = getattr(src.spec, "hub", None)
    # PEFT's AutoPeftModel loads the base from here: the hub id of a hub model, else the local folder trained on.
    config["base_model_name_or_path"] = hub or str(src.base_dir.resolve())
    if hub and src.spec.revision:
        config["revision"] = src.spec.revision
    write_json(tmp / "adapter_config.json", config)


def _copy_model(src: Source, tmp: Path) -> None:
    """A full run's model folder as transformers and vLLM load it: weights, config, tokenizer, the data record; not a
    checkpoint's training state or the trainer's pickled arguments."""
    tmp.mkdir(parents=True)
    for path in sorted(src.adapter.iterdir()):
        if (path.is_file() and path.name not in ADAPTER_SKIP + TRAINING_STATE
                and not path.name.startswith((".", "_", "rng_state"))):
            shutil.copy2(path, tmp / path.name)


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed Hub repository id before the (slow) export, not after it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--push-to-hub {repo_id!r}: not a Hub repository id (owner/name): {e}") from None


def push_to_hub(folder: Path, repo_id: str, private: bool = False, token: str | None = None) -> dict:
    """Create the model repository (kept if it exists) and upload the exported folder as one commit, its card as
    README.md; export.json, which records this machine's paths, stays here. Returns where it went."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi(token=token)  # None: HF_TOKEN or the login `hf auth login` saved
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                                   ignore_patterns=[EXPORT_RECORD], commit_message=f"distill export of {folder.name}")
    except OfflineModeIsEnabled:
        raise UserError("--push-to-hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push") from None
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        hint = " (log in with `hf auth login`, set HF_TOKEN, or pass --token)" if status in (401, 403) else ""
        raise UserError(f"--push-to-hub {repo_id}: the Hub refused: {' '.join(str(e).split())}{hint}") from None
    return {"repo": repo_id, "url": str(url), "commit": commit.oid, "commit_url": commit.commit_url,
            "private": bool(private)}


def run_export(target: str | Path, out: str | Path | None = None, merge: bool = False, hub_repo: str | None = None,
               private: bool = False, token: str | None = None) -> dict:
    """Write the export, and upload it to the Hub repository `hub_repo` when one is given; returns what was written
    (also in OUT/export.json)."""
    from distill.models.identity import weights_hash

    if hub_repo:
        check_repo_id(hub_repo)
    src = locate(target)
    if src.full and merge:
        raise UserError(f"{src.adapter}: the run trained every weight (train.method: full): its model has no adapter "
                        "to merge; export it without --merge")
    out = (Path(out) if out else _default_out(src, merge)).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_RECORD).is_file())):
        raise UserError(f"{out}: exists and was not written by `distill export`; choose another --out")
    context = _documented_context(src)  # checked before the (slow) merge
    name = f"{src.run.root.name if src.run else src.adapter.name}-student"
    dtype = base_dtype(src.base_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if src.full:
        _copy_model(src, tmp)
    elif merge:
        merge_adapter(src.base_dir, src.adapter, dtype, tmp, bool(getattr(src.spec, "trust_remote_code", False)))
    else:
        _copy_adapter(src, tmp)
    method = "full" if src.full else getattr(getattr(src.recipe, "train", None), "method", "lora")
    export = {
        "merged": merge, "method": method, "license": _license(src), "name": name, "folder": str(out), "adapter": str(src.adapter),
        "adapter_sha256": weights_hash(src.adapter), "base": str(src.base_dir.resolve()), "base_name": src.base["name"],
        "dtype": dtype if merge else (base_dtype(src.adapter) if src.full else None), "created_at": datetime.now(timezone.utc).isoformat(),
        "run": str(src.run.root.resolve()) if src.run else None,
        **({"hub_repo": hub_repo} if hub_repo else {}),  # the card's code then loads it from the Hub
    }
    export["serve_command"] = serve_command(src, out, merge, name)
    write_text(tmp / "README.md", _card(src, context, export))
    write_json(tmp / EXPORT_RECORD, export)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if hub_repo:
        export["pushed"] = push_to_hub(out, hub_repo, private, token)
        write_json(out / EXPORT_RECORD, export)
    return export
