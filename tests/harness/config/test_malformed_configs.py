"""Malformed configs, one per kind a careless or unlucky user writes: each is refused before any job
starts, by `attnbench check-config` (exit 2, one line naming the key, no traceback) and by Snakemake
when it reads the config (the workflow raises before planning, creating nothing)."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from attnbench.harness.cli import main as cli_main
from conftest import REPO

#: a valid config the cases below each break in one place
BASE = {
    "seeds": [0, 1],
    "variants": {"full": {}, "window": {"window": 4}, "lsh": {}},
    "distill": {"students": {"window": {}}},
    "model": {"layers": 2, "dim": 16, "heads": 2, "mlp_dim": 32},
    "train": {"steps": 20, "batch_size": 16, "eval_every": 10, "warmup_steps": 5},
    "tasks": {
        "listops": {"data": {"n_train": 300, "n_val": 60, "n_test": 60, "min_length": 2, "max_length": 24,
                             "max_depth": 3, "max_args": 4}},
        "image": {"data": {"source": "digits", "max_train": 300}},
    },
    "bench": {"lengths": [32, 64], "modes": ["forward_backward"], "scopes": ["layer"], "warmup": 1, "repeats": 2},
}
NAN, INF = float("nan"), float("inf")

#: (id, dotted key to set, value, what the one line must say)
CASES = [
    # numbers that are not finite, anywhere
    ("lr-nan", "train.lr", NAN, "'train.lr' is nan; give a finite number"),
    ("grad-clip-inf", "train.grad_clip", INF, "'train.grad_clip' is inf"),
    ("time-limit-nan-as-text", "train.time_limit_min", "nan", "'train.time_limit_min' is nan"),
    ("dropout-minus-inf", "model.dropout", -INF, "'model.dropout' is -inf"),
    ("per-task-steps-nan", "tasks.listops.train.steps", NAN, "'tasks.listops.train.steps' is nan"),
    ("per-variant-lr-nan", "tasks.listops.per_variant.full.train.lr", NAN,
     "'tasks.listops.per_variant.full.train.lr' is nan"),
    # types
    ("steps-a-fraction", "train.steps", 20.5, "'train.steps' is 20.5 (a number); expected integer"),
    ("batch-size-a-word", "train.batch_size", "many", "'train.batch_size' is 'many' (a string); expected integer"),
    ("layers-a-boolean", "model.layers", True, "'model.layers' is True (a boolean); expected integer"),
    ("per-task-dim-a-word", "tasks.listops.model.dim", "wide", "'tasks.listops.model.dim' is 'wide'"),
    ("variant-not-a-mapping", "variants.full", 5, "'variants.full' is 5 (an integer); expected object"),
    ("tasks-a-list", "tasks", ["listops"], "'tasks' is ['listops'] (a list); expected object"),
    # seeds NumPy and torch cannot take, or that say nothing
    ("seed-negative", "seeds", [-1], "'seeds.0' is -1; must be >= 0"),
    ("seed-past-2-32", "seeds", [2 ** 32], "'seeds.0' is 4294967296; must be <= 4294967295"),
    ("seeds-1e30", "seeds", 1e30, "'seeds' is 1e+30 (a number); expected array"),
    ("seeds-empty", "seeds", [], "'seeds' is []; give at least 1 value"),
    ("seeds-repeated", "seeds", [3, 3], "'seeds' is [3, 3]; each value may appear only once"),
    # names and keys that do not exist
    ("unknown-variant", "variants.fulll", {}, "unknown variant 'fulll' under 'variants'; known variants: full"),
    ("unknown-task", "tasks.listopz", {}, "'tasks.listopz': 'listopz' is not a registered task; known tasks: image"),
    ("unknown-train-key", "train.lrr", 0.1, "unknown key 'train.lrr'; allowed keys under 'train': accumulate"),
    ("unknown-top-level-key", "seed", [0], "unknown key 'seed'; allowed keys under the top level"),
    ("per-variant-not-trained", "tasks.listops.per_variant.sparse", {},
     "'tasks.listops.per_variant.sparse': 'sparse' is not trained by this config"),
    ("variant-from-missing-module", "variants.mine", {"from": "no_such_module:Attention"},
     "'variants.mine.from': cannot import module 'no_such_module'"),
    # values outside what is allowed
    ("lr-zero", "train.lr", 0, "'train.lr' is 0; must be > 0.0"),
    ("lr-negative", "train.lr", -1e-3, "'train.lr' is -0.001; must be > 0.0"),
    ("eval-every-zero", "train.eval_every", 0, "'train.eval_every' is 0; must be >= 1"),
    ("threads-zero", "threads", 0, "'threads' is 0; must be >= 1"),
    ("memory-cap-negative", "train.memory_cap_mb", -5, "'train.memory_cap_mb' is -5; must be >= 0"),
    ("betas-one-value", "train.betas", [0.9], "'train.betas' is [0.9]; give exactly 2 values"),
    ("beta-past-1", "train.betas", [0.9, 1.5], "'train.betas.1' is 1.5; must be < 1.0"),
    ("precision-unknown", "train.precision", "fp8", "'train.precision' is 'fp8'; allowed: auto, fp32, bf16, fp16"),
    ("schedule-unknown", "train.schedule", "exp", "'train.schedule' is 'exp'; allowed: cosine"),
    ("device-unknown", "device", "tpu", "'device' is 'tpu'; allowed: cpu, cuda, auto"),
    ("lra-average-7", "report.lra_average", 7, "'report.lra_average' is 7; allowed: 5, 6"),
    ("resources-negative", "resources.train.mem_mb", -1, "'resources.train.mem_mb' is -1; must be >= 1"),
    ("bench-length-zero", "bench.lengths", [0, 64], "'bench.lengths' is [0, 64]; give at least one value, each >= 1"),
    ("bench-repeats-zero", "bench.repeats", 0, "'bench.repeats' is 0; must be >= 1"),
    ("window-negative", "variants.window.window", -1, "'variants.window.window' is -1; must be >= 0"),
    ("image-source-unknown", "tasks.image.data.source", "nope", "'tasks.image.data.source' is 'nope'"),
    # settings that only fail together, or in a constructor
    ("odd-lsh-buckets", "variants.lsh.n_buckets", 3, "'variants.lsh' on task 'image': lsh: n_buckets must be even"),
    ("dim-not-divisible-by-heads", "model.heads", 3, "model dim 16 is not divisible by heads 3"),
    ("accumulate-not-dividing-batch", "train.accumulate", 3,
     "'train.accumulate' (3) does not divide 'train.batch_size' (16) in the runs image/full, image/lsh"),
    ("teacher-not-trained", "distill.teacher", "lsh2", "'distill.teacher' is 'lsh2' but variant 'lsh2' is not in"),
    ("student-deeper-than-teacher", "distill.student_layers", 5,
     "'distill.student_layers' is 5; the teachers of task(s) image, listops have 2 layers, so it must be <= 2"),
    # data a generator cannot produce in bounded time
    ("listops-depth-zero", "tasks.listops.data.max_depth", 0, "'tasks.listops.data.max_depth' is 0; must be >= 1"),
    ("listops-value-p-past-1", "tasks.listops.data.value_p", 1.5, "'tasks.listops.data.value_p' is 1.5"),
    ("listops-n-train-1e15", "tasks.listops.data.n_train", 1e15, "'tasks.listops.data.n_train' is 1000000000000000"),
    ("listops-min-over-max", "tasks.listops.data.min_length", 30,
     "'tasks.listops.data.min_length' is 30 but 'tasks.listops.data.max_length' is 24"),
]


def malformed(key: str, value) -> dict:
    config = copy.deepcopy(BASE)
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return config


@pytest.fixture(scope="module")
def config_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("malformed")
    files = {}
    for case_id, key, value, _ in CASES:
        files[case_id] = folder / f"{case_id}.yaml"
        files[case_id].write_text(yaml.safe_dump(malformed(key, value)))
    (folder / "valid.yaml").write_text(yaml.safe_dump(BASE))
    files["valid"] = folder / "valid.yaml"
    return files


def test_there_are_at_least_40_distinct_cases_and_the_base_is_valid(config_files, capsys):
    assert len({case_id for case_id, *_ in CASES}) == len(CASES) >= 40
    assert cli_main(["check-config", "--config", str(config_files["valid"])]) == 0
    assert capsys.readouterr().out.strip().endswith(": valid")


@pytest.mark.parametrize(("case_id", "key", "value", "says"), CASES, ids=[c[0] for c in CASES])
def test_check_config_refuses_with_one_line_naming_the_key(case_id, key, value, says, config_files, capsys):
    assert cli_main(["check-config", "--config", str(config_files[case_id])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err  # one line: no traceback, no list
    assert captured.err.startswith("attnbench: error: invalid attnbench config: ")
    assert says in captured.err


@pytest.mark.slow
def test_snakemake_refuses_every_one_before_planning(config_files, tmp_path):
    """Each config through Snakemake's own API, as `snakemake -n --configfile X` reads it (in one process:
    a `snakemake` process per config costs 4 s; tests/pipeline/test_pipeline_e2e.py runs the command itself)."""
    from snakemake.api import SnakemakeApi
    from snakemake.exceptions import WorkflowError
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    cwd = os.getcwd()
    try:
        for case_id, _, _, says in CASES:
            work = tmp_path / case_id
            work.mkdir()
            with pytest.raises(WorkflowError) as info, SnakemakeApi(OutputSettings(dryrun=True)) as api:
                workflow = api.workflow(resource_settings=ResourceSettings(cores=1), snakefile=REPO / "Snakefile",
                                        config_settings=ConfigSettings(configfiles=[config_files[case_id]]),
                                        workdir=work)
                workflow.dag().execute_workflow(executor="dryrun")
            assert says in str(info.value), (case_id, str(info.value))
            assert not (work / "results").exists() and not (work / "data").exists()
    finally:
        os.chdir(cwd)
