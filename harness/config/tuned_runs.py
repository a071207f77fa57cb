"""Tuning's runs (``tune:``): a resolved run as a tuning trial or as a final run with the selected trial's point
(``runs.resolve_run`` calls ``tuned_run``), the trials of a config's final runs, and the selection a tuned final
run waits for (``selected.json``, written by ``selection.write_selection``)."""
from __future__ import annotations

from attnbench.harness.config.schema import ConfigError
from attnbench.harness.config.seeds import first_seed
from attnbench.harness.config.tuning import apply_point, own_point, trial_points
from attnbench.harness.core import paths
from attnbench.harness.core.json_values import UnreadableJSON, read_json
from attnbench.harness.core.registry import as_dict, build_dataclass
from attnbench.harness.results.records import RunKey
from attnbench.harness.run.model import ModelConfig
from attnbench.harness.run.train_config import TrainConfig
from attnbench.variants import VARIANTS


def tuning_on(config: dict) -> bool:
    """Whether the config tunes every (task, run label) before its final runs (``tune.trials`` > 0)."""
    return config.get("tune", {}).get("trials", 0) > 0


def tuned_run(config: dict, run: dict, trial: int | None, selection: dict | None) -> dict:
    """``run`` as a tuning trial (``trial``) or as a final run with the selected point (``selection``)."""
    tune = config["tune"]
    if trial is not None:
        if not 0 <= trial < tune["trials"]:
            raise ConfigError(f"trial {trial} of {RunKey.of(run).run_id}: 'tune.trials' is {tune['trials']}")
        point, stage = trial_points(tune, own_point(run, tune["space"]))[trial], "tune"
        run = {**run, "train": {**run["train"], **tune["train"]}}
    else:
        assert selection is not None  # a final run (no trial) comes with its selection: resolve_run passes one
        point, trial, stage = selection["point"], selection["trial"], "final"
    try:
        run = apply_point(run, point)
        run["train"] = as_dict(build_dataclass(TrainConfig, run["train"], "train"))
        run["model"] = as_dict(build_dataclass(ModelConfig, run["model"], "model"))
        run["variant"]["params"] = as_dict(VARIANTS.make_config(run["variant"]["name"], run["variant"]["params"]))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"tuning point {point} of {RunKey.of(run).run_id}: {exc}") from None
    run["tuning"] = {"stage": stage, "trial": trial, "trials": tune["trials"], "point": point}
    return run


def trial_keys(config: dict, final: list[RunKey]) -> list[RunKey]:
    """The tuning trials of the (task, variant, method) of the final runs ``final``: ``tune.trials`` each."""
    pairs = dict.fromkeys((key.task, key.variant, key.method) for key in final)
    return [RunKey(task, variant, first_seed(config), method, trial)
            for task, variant, method in pairs for trial in range(config["tune"]["trials"])]


def read_selection(key: RunKey) -> dict | None:
    """The trial selected for ``key``'s (task, label) (``selected.json``, written by ``attnbench select``), or None
    while it is not there (the trials have not all run); a file that cannot be read counts as not there."""
    try:
        selection = read_json(paths.selection_file(key.task, key.label))
    except (OSError, UnreadableJSON):
        return None
    return selection if isinstance(selection, dict) and {"trial", "point"} <= set(selection) else None
