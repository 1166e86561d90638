"""Docs that cannot rot: every fenced command of README.md and docs/*.md is parsed, and every stage
command (`launch/<stage>.py`, under torchrun, `-m` sweeps, sbatch and srun wrappers included) is composed
with its recipe exactly as its launcher would, so a key that does not exist, a missing `+` or a wrong
launcher field fails here. The data-making commands run for real (at small sizes). Links stay inside
the repository and point at files and headings that exist.

Run as well, when PONDER_DOCS_RUN=1 (expensive: 10 min measured on 2 loaded CPUs): the README's CPU
walk-through in order, data -> pretrain -> SFT -> grade -> RLCS -> eval, each stage cut to 1-2 steps.
Checked, not run: the 9B/cluster commands (they need GPUs and a Slurm cluster), `make`, the Slurm
helpers and sweeps (run in tests/sweeps).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# launch script -> (primary config, schema name, schema class)
STAGES = {
    "pretrain": ("pretrain", "pretrain_schema", "stages.pretrain:PretrainConfig"),
    "sft": ("sft", "sft_schema", "stages.sft:SFTConfig"),
    "rl": ("rl", "rl_schema", "stages.rl.config:RLConfig"),
    "grade": ("grade", "grade_schema", "stages.rl.grading:GradeConfig"),
    "eval": ("eval", "eval_schema", "stages.evaluate:EvalRunConfig"),
}
DATA_MODULES = ("data_pipelines.synthetic", "data_pipelines.shards", "data_pipelines.visual_tasks")
SCRIPT = re.compile(r"(?:^|/)launch/(\w+)\.py$")
PLACEHOLDER = re.compile(r"<[^<>]*>")


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def fenced_commands() -> list[Command]:
    """Every shell command in a fenced block (continuations joined; YAML/text/Python blocks and
    tree listings skipped)."""
    commands = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        block, lang, start = None, "", 0
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                if block is None:
                    block, lang, start = [], line[3:].strip(), number
                    continue
                if lang in ("", "bash", "sh", "console"):
                    commands += _commands(path.relative_to(REPO).as_posix(), start, block)
                block = None
            elif block is not None:
                block.append(line)
    return commands


def _commands(doc: str, start: int, block: list[str]) -> list[Command]:
    out, pending, first = [], "", 0
    for offset, line in enumerate(block, 1):
        if not pending:
            first = start + offset
            if not re.match(r"^(python|torchrun|make|sbatch|srun|scripts/|cd |export |source |cat |split |bash )",
                            line.strip()):
                continue  # output, a directory tree, a config excerpt
        continued = line.rstrip().endswith("\\")
        pending += line.rstrip().removesuffix("\\") + (" " if continued else "\n")
        if not continued and _parses(pending):  # else a quoted string spans lines (python -c "...")
            out.append(Command(doc, first, pending.strip()))
            pending = ""
    return out


def _parses(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
        return True
    except ValueError:
        return False


def _words(text: str) -> list[str]:
    return shlex.split(PLACEHOLDER.sub("placeholder", text).replace("…", "x"), comments=True)


def stage_invocations(command: Command) -> list[tuple[str, list[str], bool]]:
    """(stage, overrides, multirun) of every launch/<stage>.py in the command, including one inside a
    `bash -c '...'` string."""
    found = []
    for part in re.split(r"&&|;|\|", command.text):
        words = _words(part)
        for i, word in enumerate(words):
            if " " in word and "launch/" in word:  # bash -c '... launch/grade.py ...'
                found += stage_invocations(Command(command.doc, command.line, word))
            match = SCRIPT.search(word)
            if match and match.group(1) in STAGES:
                rest = words[i + 1:]
                found.append((match.group(1), [w for w in rest if "=" in w and not w.startswith("-")], "-m" in rest))
    return found


def _first_point(override: str) -> str:
    """A sweep override's first value (`a=x,y,z` -> `a=x`), leaving lists (`a=[x,y]`) alone."""
    key, _, value = override.partition("=")
    if value.startswith("[") or "," not in value:
        return override
    return f"{key}={value.split(',')[0]}"


def compose_stage(stage: str, overrides: list[str], multirun: bool):
    primary, schema, target = STAGES[stage]
    module, name = target.split(":")
    ConfigStore.instance().store(name=schema, node=getattr(__import__(module, fromlist=[name]), name))
    overrides = [_first_point(o) if multirun else o for o in overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base="1.3"):
        return compose(config_name=primary, overrides=overrides, return_hydra_config=True)


COMMANDS = fenced_commands()
STAGE_COMMANDS = [c for c in COMMANDS if stage_invocations(c)]


def test_the_docs_have_commands_to_check():
    assert len(COMMANDS) >= 40 and len(STAGE_COMMANDS) >= 25, (len(COMMANDS), len(STAGE_COMMANDS))
    assert {s for c in STAGE_COMMANDS for s, _, _ in stage_invocations(c)} == set(STAGES)


@pytest.mark.parametrize("command", STAGE_COMMANDS, ids=str)
def test_stage_command_has_valid_recipe_keys(command):
    for stage, overrides, multirun in stage_invocations(command):
        cfg = compose_stage(stage, overrides, multirun)
        assert cfg.hydra.runtime.choices.recipe, command
        launcher = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra/launcher=")]
        if launcher:  # a launcher's own fields are checked by instantiating it (submits nothing)
            from hydra.core.hydra_config import HydraConfig
            from hydra.utils import instantiate

            HydraConfig.instance().set_config(cfg)  # the launcher's folder interpolates hydra.sweep.dir
            assert multirun, f"{command}: hydra/launcher only acts with -m"
            instantiate(cfg.hydra.launcher)


def test_a_wrong_key_or_missing_plus_is_caught():
    from hydra.errors import ConfigCompositionException

    for bad in (["recipe=sft_tiny", "trainer.max_stepz=3"], ["recipe=rlcs_tiny", "curriculum.domain_weights.math=2"],
                ["recipe=pretrain_tiny", "hydra/launcher=slurm_gpu", "hydra.launcher.env.NCCL_SOCKET_IFNAME=ib0"]):
        stage = {"sft_tiny": "sft", "rlcs_tiny": "rl", "pretrain_tiny": "pretrain"}[bad[0].split("=")[1]]
        with pytest.raises(ConfigCompositionException):
            compose_stage(stage, bad, False)
    ok = compose_stage("pretrain", ["recipe=pretrain_tiny", "hydra/launcher=slurm_gpu",
                                    "+hydra.launcher.env.NCCL_SOCKET_IFNAME=ib0"], True)
    assert ok.hydra.launcher.env.NCCL_SOCKET_IFNAME == "ib0"


def test_module_commands_name_real_modules_and_scripts():
    for command in COMMANDS:
        words = _words(command.text)
        for i, word in enumerate(words):
            if word == "-m" and i > 0 and words[i - 1].endswith("python"):
                module = words[i + 1]
                assert (REPO / (module.replace(".", "/") + ".py")).is_file() or module.startswith("torch."), command
            if word.startswith("scripts/"):
                assert (REPO / word).is_file(), command
            if word.startswith("launch/") and word.endswith(".py"):
                assert (REPO / word).is_file(), command
        if words[:1] == ["make"]:
            targets = [w for w in words[1:] if "=" not in w]
            makefile = (REPO / "Makefile").read_text()
            assert all(re.search(rf"^{t}:", makefile, re.M) for t in targets), command


def test_data_commands_run(tmp_path):
    """The documented data-making commands, run as written (sizes cut to a few records)."""
    ran, seen = 0, set()
    for command in COMMANDS:
        words = _words(command.text)
        if words[:2] != ["python", "-m"] or words[2] not in DATA_MODULES or command.text in seen:
            continue  # not a data command, or one that another doc repeats word for word
        seen.add(command.text)
        if any(re.fullmatch(r"\[.*|.*\]|[A-Z_]{2,}", w) for w in words):  # a usage synopsis: DIR, [--flag]
            continue
        args = [re.sub(r"^(?:\./)?(data/)", str(tmp_path) + "/\\1", w) for w in words[1:]]
        for flag, small in (("--num", "12"), ("--samples-per-shard", "4")):
            if flag in args:
                args[args.index(flag) + 1] = small
        if words[2] == "data_pipelines.synthetic" and "--num" not in args:
            args += ["--num", "12"]  # the default size (400 documents) is the user's, not the test's
        done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
        ran += 1
    assert ran >= 7


HEADING = re.compile(r"^#+\s+(.*)$", re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's heading slug."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return slug.replace(" ", "-")


def test_links_stay_inside_the_repository_and_resolve():
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            assert resolved.is_relative_to(REPO), f"{doc.name}: {target} points outside the repository"
            assert resolved.exists(), f"{doc.name}: {target} does not exist"
            if anchor and resolved.suffix == ".md":
                anchors = {_anchor(h) for h in HEADING.findall(resolved.read_text())}
                assert anchor in anchors, f"{doc.name}: {target}: no heading #{anchor} in {resolved.name}"
        assert "../shared/" not in doc.read_text(), f"{doc.name} refers to ../shared/, outside the repository"


# Per-stage overrides that make a documented tiny command finish in seconds; appended, so every key
# the docs wrote is still parsed and used.
SHORT = {
    "pretrain": ["trainer.max_steps=2", "trainer.save_every=2"],
    "sft": ["trainer.max_steps=2", "trainer.save_every=2", "eval.every=0", "data.records_per_shard=8"],
    "grade": ["k=2", "rollout.max_new_tokens=8"],
    "rl": ["trainer.max_steps=1", "trainer.save_every=1", "batch.prompts_per_step=4", "rollout.group_size=2",
           "rollout.max_new_tokens=8", "eval.path=null"],
    "eval": ["samples=2", "ks=[1,2]", "rollout.max_new_tokens=8"],
}


@pytest.mark.skipif(not os.environ.get("PONDER_DOCS_RUN"), reason="expensive (~4 min on 2 CPUs): set PONDER_DOCS_RUN=1")
def test_readme_cpu_commands_run_in_order(tmp_path):
    """The README's CPU walk-through as written, in order, with each stage cut to 1-2 steps (SHORT)
    and the data cut to a few records; the Slurm sweep lines are checked above, run in tests/sweeps."""
    ran = []
    for command in (c for c in COMMANDS if c.doc == "README.md"):
        words = _words(command.text)
        if words[:2] == ["python", "-m"] and words[2] in DATA_MODULES:
            args = words[1:]
            for flag in ("--num", "--samples-per-shard"):
                if flag in args:
                    args[args.index(flag) + 1] = "24" if flag == "--num" else "8"
            cmd = [sys.executable, *args]
        elif words[:1] == ["torchrun"] or (words[:1] == ["python"] and words[1:2] and SCRIPT.search(words[1])):
            if "-m" in words[1:3] or "hydra/launcher=slurm_cpu" in words:
                continue  # a Slurm sweep: tests/sweeps
            (stage, _, _), = stage_invocations(command)
            start = [i for i, w in enumerate(words) if SCRIPT.search(w)][0]
            runner = [sys.executable, "-m", "torch.distributed.run", *words[1:start]] if words[0] == "torchrun" \
                else [sys.executable]
            args = [re.sub(r"checkpoints/step_\d+$", "checkpoints/step_2", w) for w in words[start + 1:]]
            cmd = [*runner, str(REPO / words[start]), *args, *SHORT[stage]]
        else:
            continue
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        ran.append(command.text.split()[:3])
    assert len(ran) >= 10, ran
    assert (tmp_path / "runs" / "rlcs_tiny" / "checkpoints" / "step_1" / "COMPLETE").exists()
