"""The ways out of plain LoRA: train.method (lora, qlora, full), LoRA on every linear layer, gradient checkpointing,
packing, and the typed pass-through of other SFTConfig settings (train.trainer_args).

Each is checked where it acts: the recipe refuses what cannot work, naming the key; the trainer gets what the recipe
says; the train stage saves what the method makes; every setting counts in the train fingerprint. Training is the real
train stage on the tiny model, a few steps at a time. QLoRA needs a CUDA GPU: here its refusal and the 4-bit config it
would load with are checked, never its kernels.
"""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import run_cli
from test_filters import row
from test_train_format import LONG, SHORT, recipe_for

from distill.errors import UserError
from distill.recipe import Recipe, load_recipe
from distill.recipe.loading import RecipeError
from distill.recipe.train import TRAINER_ARGS_SET_BY_DISTILL
from distill.run_dir import RunDir
from distill.train.formats import check_stop_learned, training_examples
from distill.train.stage import build_trainer, distill_trainer_settings, examples_as_trained, run_train

SHORT_AS_TRAINED = [" " + c for c in SHORT]  # completion_template " {{ completion }}"
WORDS = ["cat", "dog", "box", "church", "leaf", "mouse", "goose", "foot", "wolf", "knife", "city", "baby"]
ATTENTION_AND_MLP = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def prepared_run(tmp_path, recipe: Recipe) -> tuple[RunDir, Recipe]:
    """A run directory whose generate and filter stages are done (kept rows written by hand), ready to train."""
    run = RunDir(tmp_path / "run")
    rows = [{**row(i, PLURALS[w], inp=w), "kept": True} for i, w in enumerate(WORDS)]
    run.filtered.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), run.filtered)
    run.mark_complete("generate", "prepared-by-test", {})
    run.mark_complete("filter", "prepared-by-test", {})
    d = recipe.model_dump(mode="json")
    d["run_dir"] = str(run.root)
    return run, Recipe.model_validate(d)


PLURALS = {"cat": "cats", "dog": "dogs", "box": "boxes", "church": "churches", "leaf": "leaves", "mouse": "mice",
           "goose": "geese", "foot": "feet", "wolf": "wolves", "knife": "knives", "city": "cities", "baby": "babies"}


def trainer_args_of(folder) -> object:
    """The SFTConfig the trainer ran with, as it saved it beside the weights."""
    return torch.load(folder / "training_args.bin", weights_only=False)


def test_an_adapter_on_every_linear_layer_trains_with_checkpointing_packing_and_passed_settings(tiny_model, tmp_path):
    recipe = recipe_for(tiny_model, max_length=48, lora={"r": 2, "alpha": 4, "target_modules": ["all-linear"]},
                        gradient_checkpointing=True, packing=True,
                        trainer_args={"optim": "adamw_torch", "adam_beta2": 0.95, "max_steps": 3})
    run, recipe = prepared_run(tmp_path, recipe)
    summary = run_train(recipe, run)

    # all-linear reached PEFT as its word: every attention and MLP projection got an adapter, not the output head
    config = json.loads((run.adapter / "adapter_config.json").read_text())
    assert {name.rpartition(".")[2] for name in config["target_modules"]} == ATTENTION_AND_MLP
    args = trainer_args_of(run.adapter)
    assert args.gradient_checkpointing and args.packing and args.packing_strategy == "bfd"
    assert (args.optim, args.adam_beta2, args.max_steps) == ("adamw_torch", 0.95, 3)  # passed through as given
    assert summary["steps"] == 3 and summary["method"] == "lora"
    assert 0 < summary["parameters_trained"] < summary["parameters"] / 10
    # packed, yet every one of the 12 rows was checked for its EOS label, and each has it
    assert summary["format_check"]["rows_checked"] == 12 and summary["format_check"]["rows_without_eos"] == 0


def test_full_fine_tuning_saves_a_whole_model_where_the_adapter_would_be(tiny_model, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    recipe = recipe_for(tiny_model, method="full", max_length=48, trainer_args={"max_steps": 2})
    run, recipe = prepared_run(tmp_path, recipe)
    summary = run_train(recipe, run)

    names = {p.name for p in run.adapter.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_data.json"} <= names
    assert "adapter_config.json" not in names
    assert summary["method"] == "full" and summary["parameters_trained"] == summary["parameters"]
    model = AutoModelForCausalLM.from_pretrained(run.adapter)  # transformers loads it alone, no PEFT
    assert type(model).__name__ == "Qwen2ForCausalLM"
    trained, base = load_file(run.adapter / "model.safetensors"), load_file(tiny_model / "model.safetensors")
    moved = [k for k in base if not torch.equal(base[k], trained[k])]
    assert any("mlp" in k for k in moved) and any("self_attn" in k for k in moved)  # every layer trains, not a few


def test_packing_keeps_each_row_apart_and_every_row_learns_its_eos(tiny_model, tmp_path):
    """TRL's best-fit packing puts several rows in one sequence, each with its own positions: the EOS check reads each
    row of each pack, and the model sees each row as if alone (no attention across rows)."""
    completions = SHORT + [LONG]
    rows = [row(i, c, inp=f"word{i}") for i, c in enumerate(completions)]
    packed_recipe = recipe_for(tiny_model, max_length=48, packing=True, max_truncated_share=0.5)
    plain_recipe = recipe_for(tiny_model, max_length=48, max_truncated_share=0.5)
    examples = training_examples(packed_recipe, rows)
    packed, tokenizer = build_trainer(packed_recipe, tiny_model, examples, tmp_path / "packed")
    plain, _ = build_trainer(plain_recipe, tiny_model, examples, tmp_path / "plain")
    assert len(packed.train_dataset) < len(examples)  # packs, not rows

    # The same finding packed as unpacked (the example shown aside: packs reorder rows): 9 rows checked, the long one
    # cut by max_length before packing.
    check = check_stop_learned(examples_as_trained(packed), tokenizer, ["\n"], len(examples), 48, 0.5)
    unpacked = check_stop_learned(plain, tokenizer, ["\n"], len(examples), 48, 0.5)
    assert {**check, "example_completion": None} == {**unpacked, "example_completion": None}
    assert check["rows_checked"] == 9 and check["rows_without_eos"] == 1 and check["example_completion"] in SHORT_AS_TRAINED

    # A pack of several rows, as the trainer collates it: positions restart at every row...
    pack = next(p for p in packed.train_dataset if len(p["seq_lengths"]) > 1)
    batch = packed.data_collator([pack])
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == len(pack["seq_lengths"]) and all(batch["labels"][0, s] == -100 for s in starts)
    # ...and each row's logits are those of the row alone: nothing leaks across the boundary
    model = packed.model.eval()
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for n in pack["seq_lengths"]:
            alone = model(input_ids=batch["input_ids"][:, start:start + n], use_cache=False).logits[0]
            assert torch.allclose(together[start:start + n], alone, atol=1e-5)
            start += n


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_qlora_is_refused_without_cuda_and_would_load_the_base_in_4_bits(tiny_model, tmp_path):
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    from distill.train.student import lora_config, quantization_config

    recipe = recipe_for(tiny_model, method="qlora")  # validates anywhere: a login node checks a GPU job's recipe
    config = quantization_config(recipe)
    assert isinstance(config, BitsAndBytesConfig)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float32  # the student's training dtype on this machine
    assert isinstance(lora_config(recipe), LoraConfig)  # the adapter it trains on the 4-bit base
    assert quantization_config(recipe_for(tiny_model)) is None and lora_config(recipe_for(tiny_model, method="full")) is None

    with pytest.raises(UserError, match="train.method: qlora .* needs a CUDA GPU"):
        build_trainer(recipe, tiny_model, [], tmp_path / "ckpt")
    run, recipe = prepared_run(tmp_path, recipe)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    result = run_cli("train", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: train.method: qlora loads the student in 4 bits with bitsandbytes, which needs a CUDA GPU" in result.stderr
    assert not run.adapter.exists()


@pytest.mark.parametrize("override, message", [
    ("train.trainer_args={adam_beta: 0.9}",
     "train.trainer_args: adam_beta is not a setting of TRL's SFTConfig (did you mean adam_beta2, adam_beta1?)"),
    ("train.trainer_args={learning_rate: 0.1}", "train.trainer_args: learning_rate is set by train.learning_rate, not here"),
    ("train.trainer_args={packing_strategy: wrapped}", "packing_strategy is set by train.packing (best-fit packing"),
    ("train.trainer_args={push_to_hub: true}", "push_to_hub is set by `distill export --push-to-hub`"),
    ("train.trainer_args={adam_beta2: high}", "train.trainer_args: adam_beta2: 'high' is not what SFTConfig takes (float)"),
    ("train.trainer_args={max_steps: 2.5}", "train.trainer_args: max_steps: 2.5 is not what SFTConfig takes (int)"),
    ("train.lora.target_modules=[all-linear, q_proj]", "train.lora.target_modules: all-linear already names every linear"),
    ("train.method=full", None),
    ("train.method=qlora", None),
    ("train.trainer_args={optim: adafactor, lr_scheduler_kwargs: {min_lr: 0.0}}", None),
])
def test_the_recipe_checks_the_knobs_naming_the_key(tiny_recipe, override, message):
    if message is None:
        load_recipe(tiny_recipe, [override])
        return
    with pytest.raises(RecipeError) as caught:
        load_recipe(tiny_recipe, [override])
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_methods_and_packing_are_refused_with_the_objectives_that_cannot_take_them(tiny_recipe):
    with pytest.raises(RecipeError, match="train.method: full with objective on_policy: its loop samples through vLLM "
                                          "with the current LoRA adapter"):
        load_recipe(tiny_recipe, ["train.objective=on_policy", "train.method=full"])
    with pytest.raises(RecipeError, match="train.method: qlora with objective on_policy"):
        load_recipe(tiny_recipe, ["train.objective=on_policy", "train.method=qlora"])
    with pytest.raises(RecipeError, match="train.packing: true with objective sft\\+kd: packing is for sft only"):
        load_recipe(tiny_recipe, ["generate.logprobs=5", "train.objective=sft+kd", "train.packing=true"])


def test_every_knob_counts_in_the_train_fingerprint(tiny_recipe):
    from distill.fingerprint import train_settings

    base = train_settings(load_recipe(tiny_recipe))
    for override in ("train.method=full", "train.method=qlora", "train.gradient_checkpointing=false",
                     "train.packing=true", "train.trainer_args={adam_beta2: 0.95}", "train.lora.target_modules=[all-linear]"):
        assert train_settings(load_recipe(tiny_recipe, [override])) != base, override
    # what only the card shows, and a full fine-tune's unused adapter settings, redo nothing
    assert train_settings(load_recipe(tiny_recipe, ["train.license=mit"])) == base
    full = train_settings(load_recipe(tiny_recipe, ["train.method=full"]))
    assert train_settings(load_recipe(tiny_recipe, ["train.method=full", "train.lora.r=8"])) == full


def test_the_settings_distill_sets_are_the_ones_trainer_args_refuses(tiny_model, tmp_path):
    """One place per setting: whatever distill passes to SFTConfig, train.trainer_args may not pass too; and every
    refused name is a real field (no typo lets a setting through)."""
    from distill.train.kd_trainer import KDConfig

    fields = {f.name for f in dataclasses.fields(KDConfig)}
    assert set(TRAINER_ARGS_SET_BY_DISTILL) <= fields
    for recipe in (recipe_for(tiny_model, packing=True, gradient_checkpointing=True, save_steps=5),
                   Recipe.model_validate({**recipe_for(tiny_model).model_dump(mode="json"),
                                          "generate": {"template": "Q: {{ input }} A:", "logprobs": 5},
                                          "train": {**recipe_for(tiny_model).train.model_dump(mode="json"),
                                                    "objective": "sft+kd"}})):
        assert set(distill_trainer_settings(recipe, tmp_path)) <= set(TRAINER_ARGS_SET_BY_DISTILL)


@pytest.mark.slow
def test_a_full_fine_tune_runs_end_to_end_and_is_evaluated_as_the_model_it_saved(tiny_recipe, tmp_path):
    """`distill run` with train.method full: evaluation scores the saved model itself (no adapter), export copies it."""
    result = run_cli("run", tiny_recipe, "train.method=full", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = RunDir(tmp_path / "runs" / "tiny")
    report = json.loads((run.stage("evaluate") / "report.json").read_text())
    assert {"base", "student"} <= set(report["sets"]["plural"]["models"])
    assert "adapters_served" not in report and report["training_cost"] is not None
    exported = run_cli("export", run.root, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (run.root / "export" / "model" / "config.json").is_file()
