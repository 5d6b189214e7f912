"""Does each model run in the dtype this machine computes fast, and does the run say so?

`dtype: auto` is decided per machine: the choice is checked on simulated machines (CPU feature sets, GPUs), the
emulation of an older CPU through the environment caps torch and oneDNN read, and the fingerprint, which must
rerun a stage whose models resolve to another dtype. Real vLLM engines show prefix caching where it is safe, and
seeded sampling of many prompts on the CPU build.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, write_recipe

from distill.models.dtype import choose_dtype, slow_dtype_warning
from distill.models.hardware import Gpu, Machine, hidden_by_caps
from distill.recipe import ModelSpec

SAPPHIRE_RAPIDS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8"})
COOPER_LAKE = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"})  # AVX512-BF16, no AMX
SKYLAKE_SERVER = frozenset({"avx2", "fma", "avx512f", "avx512bw"})  # AVX-512 without bf16
EPYC_ZEN2 = frozenset({"avx2", "fma"})  # the AVX2-only machine of the issue

AMX_CPU = Machine(cpu="Xeon (AMX)", cpu_flags=SAPPHIRE_RAPIDS)
AVX2_CPU = Machine(cpu="EPYC (AVX2)", cpu_flags=EPYC_ZEN2)
H100 = Machine(cpu_flags=EPYC_ZEN2, gpus=(Gpu("NVIDIA H100", (9, 0), 80.0),))
T4 = Machine(cpu_flags=EPYC_ZEN2, gpus=(Gpu("Tesla T4", (7, 5), 16.0),))


@pytest.mark.parametrize("machine, teacher, student", [
    (AMX_CPU, "bfloat16", "float32"),
    (Machine(cpu_flags=COOPER_LAKE), "bfloat16", "float32"),
    (Machine(cpu_flags=SKYLAKE_SERVER), "float32", "float32"),
    (AVX2_CPU, "float32", "float32"),
    (H100, "bfloat16", "bfloat16"),
    (T4, "float16", "float32"),
], ids=["amx", "avx512-bf16", "avx512", "avx2", "h100", "t4"])
def test_auto_takes_bf16_only_where_the_hardware_computes_it(machine, teacher, student):
    assert choose_dtype("auto", machine).dtype == teacher
    # the student is trained in float32 on a CPU, and evaluated as trained
    assert choose_dtype("auto", machine, trained=True).dtype == student


def test_a_gpu_without_bf16_keeps_weights_stored_in_bf16_out_of_float16():
    assert choose_dtype("auto", T4, stored="bfloat16").dtype == "float32"
    assert choose_dtype("auto", T4, stored="float16").dtype == "float16"


def test_a_pinned_dtype_is_kept_whatever_the_machine():
    for machine in (AMX_CPU, AVX2_CPU, H100):
        assert choose_dtype("float32", machine).dtype == "float32"
        assert choose_dtype("bfloat16", machine, trained=True).dtype == "bfloat16"


@pytest.mark.parametrize("env", [{"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"ATEN_CPU_CAPABILITY": "avx2"}])
def test_an_avx2_cap_in_the_environment_emulates_an_avx2_only_cpu(env):
    caps, hidden = hidden_by_caps(SAPPHIRE_RAPIDS, env)
    emulated = Machine(cpu_flags=SAPPHIRE_RAPIDS, caps=caps, hidden=hidden)
    assert emulated.features == frozenset({"avx2", "fma"})
    assert choose_dtype("auto", emulated).dtype == "float32"
    assert "AVX2 only" in emulated.cpu_summary() and "emulated with" in emulated.cpu_summary()


def test_a_cap_above_bf16_leaves_bf16_alone():
    caps, hidden = hidden_by_caps(SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"})
    machine = Machine(cpu_flags=SAPPHIRE_RAPIDS, caps=caps, hidden=hidden)
    assert "amx_bf16" not in machine.features and choose_dtype("auto", machine).dtype == "bfloat16"


def test_a_pinned_dtype_that_is_slow_here_is_named_with_the_faster_choice():
    spec = ModelSpec(packaged="smollm2-135m-instruct", dtype="bfloat16")
    warning = slow_dtype_warning("models.teacher.dtype", spec, "teacher", AVX2_CPU)
    assert warning.startswith("models.teacher.dtype: bfloat16 is emulated on this CPU")
    assert "`dtype: auto` chooses float32 here" in warning
    assert slow_dtype_warning("models.teacher.dtype", spec, "teacher", AMX_CPU) is None
    float32 = ModelSpec(packaged="smollm2-135m-instruct", dtype="float32")
    assert "bfloat16 here" in slow_dtype_warning("models.teacher.dtype", float32, "teacher", H100)
    assert slow_dtype_warning("models.student.dtype", float32, "student", AVX2_CPU) is None
    assert slow_dtype_warning("models.teacher.dtype", ModelSpec(packaged="smollm2-135m-instruct"), "teacher", AVX2_CPU) is None


# --------------------------------------------------------------------------- the fingerprint


@pytest.fixture
def auto_recipe(tmp_path, tiny_model) -> Path:
    return write_recipe(tmp_path, tiny_model)


def _fingerprint(recipe_file: Path, stage: str, machine: Machine, monkeypatch, *overrides: str) -> str:
    import distill.models.dtype as D
    from distill.stages import fingerprint
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir

    monkeypatch.setattr(D, "this_machine", lambda: machine)
    run = RunDir(recipe_file.parent / "run")
    for upstream in ("generate", "filter"):  # finished earlier, with a fixed output
        run.stage(upstream).mkdir(parents=True, exist_ok=True)
        (run.stage(upstream) / "out.txt").write_text(f"{upstream} output")
        run.mark_complete(upstream, "done-earlier", {})
    return fingerprint(load_recipe(recipe_file, list(overrides)), run, stage)


def test_a_teacher_that_resolves_to_another_dtype_on_another_machine_reruns_generation(auto_recipe, monkeypatch):
    auto = ("models.teacher.dtype=auto",)
    assert _fingerprint(auto_recipe, "generate", AMX_CPU, monkeypatch, *auto) != \
        _fingerprint(auto_recipe, "generate", AVX2_CPU, monkeypatch, *auto)
    # pinned, the machine changes nothing
    assert _fingerprint(auto_recipe, "generate", AMX_CPU, monkeypatch) == \
        _fingerprint(auto_recipe, "generate", AVX2_CPU, monkeypatch)


def test_the_student_trains_in_float32_on_any_cpu_so_training_reruns_only_on_a_gpu(auto_recipe, monkeypatch):
    auto = ("models.student.dtype=auto",)
    amx = _fingerprint(auto_recipe, "train", AMX_CPU, monkeypatch, *auto)
    assert amx == _fingerprint(auto_recipe, "train", AVX2_CPU, monkeypatch, *auto)
    assert amx != _fingerprint(auto_recipe, "train", H100, monkeypatch, *auto)


# --------------------------------------------------------------------------- what the user sees


def test_validate_names_the_dtype_of_each_model_and_warns_of_a_slow_pinned_one(auto_recipe, monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # an AVX2-only CPU, emulated on any machine
    proc = run_cli("validate", auto_recipe, "models.teacher.dtype=bfloat16", "models.student.dtype=auto")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "AVX2 only (no AVX-512, no AMX); emulated with ATEN_CPU_CAPABILITY=avx2" in proc.stderr
    assert "teacher bfloat16 (pinned in the recipe); student float32 (auto: trained on this CPU" in proc.stderr
    assert "warning: models.teacher.dtype: bfloat16 is emulated on this CPU" in proc.stderr


# --------------------------------------------------------------------------- prefix caching, on real engines


def test_the_teachers_engine_shares_few_shot_prefixes_and_answers_as_without(tiny_model):
    """Prefix caching with a block that fits a shared prefix: the same greedy answers as with no cache."""
    from distill.models.vllm_engine import VLLMEngine

    prefix = "".join(f"Q: plural of '{w}'? A: {w}s\n" for w in ("cat", "dog", "cup", "hat", "pen", "map", "bag"))
    prompts = [prefix + f"Q: plural of '{w}'? A:" for w in ("box", "fox", "bus", "car", "key", "toy", "day", "egg")]
    answers, configs = {}, {}
    for caching in (True, False):
        spec = ModelSpec(path=str(tiny_model), dtype="float32", engine={"prefix_caching": caching})
        engine = VLLMEngine(tiny_model, spec)
        try:
            answers[caching] = [c[0].text for c in engine.generate(prompts, seeds=list(range(len(prompts))), max_tokens=6)]
            configs[caching] = engine.llm.llm_engine.vllm_config.cache_config
        finally:
            engine.close()
    assert configs[True].enable_prefix_caching and configs[True].block_size == 32  # the CPU block, not vLLM's 128
    assert not configs[False].enable_prefix_caching
    assert answers[True] == answers[False]


def test_seeded_sampling_of_more_prompt_tokens_than_an_engine_step_takes_answers_each_prompt_as_alone(tiny_model):
    """The loop's uncertainty and writing, synthesize mode and on-policy sampling draw seeded samples (temperature 1)
    of many prompts at once. On vLLM's CPU build a prompt prefilled over two steps killed the engine ("CPU Generator
    does not use offset", 400 intent prompts x 4 samples); each prompt is now prefilled whole, and samples as it does
    alone."""
    from distill.models.vllm_engine import VLLMEngine

    prompts = [" ".join(f"word{i}x{j}" for j in range(40)) for i in range(120)]  # over 12,000 prompt tokens
    engine = VLLMEngine(tiny_model, ModelSpec(path=str(tiny_model), dtype="float32"))
    try:
        together = engine.generate(prompts, seeds=list(range(120)), n=4, temperature=1.0, max_tokens=4)
        alone = engine.generate(prompts[-1:], seeds=[119], n=4, temperature=1.0, max_tokens=4)
    finally:
        engine.close()
    assert [len(samples) for samples in together] == [4] * 120
    assert [c.text for c in together[-1]] == [c.text for c in alone[0]]


def test_an_engine_whose_prompt_log_probabilities_are_read_never_caches_prefixes(tiny_model):
    from distill.errors import UserError
    from distill.models.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_model, ModelSpec(path=str(tiny_model), dtype="float32"), reads_prompt_logprobs=True)
    try:
        assert not engine.prefix_caching and not engine.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    finally:
        engine.close()
    with pytest.raises(UserError, match="prefix_caching: true on an engine whose prompt log-probabilities are read"):
        VLLMEngine(tiny_model, ModelSpec(path=str(tiny_model), engine={"prefix_caching": True}), reads_prompt_logprobs=True)


def test_score_mode_with_prefix_caching_forced_on_is_a_recipe_error(tiny_recipe):
    proc = run_cli("validate", tiny_recipe, "generate.mode=score", "generate.logprobs=5",
                   "models.teacher.engine.prefix_caching=true")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "models.teacher.engine.prefix_caching: true, but generate.mode: score" in proc.stderr
