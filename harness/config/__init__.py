"""The pipeline config: its schema completed from the code (``schema``), validation with one
line per problem (``validate``), and the runs it asks for, resolved in full (``runs``)."""
from attnbench.harness.config.runs import (
    plan_hashes,
    planned_runs,
    resolve_run,
    run_hash,
    task_data_params,
    task_resources,
    variant_params,
)
from attnbench.harness.config.schema import ConfigError, build_schema
from attnbench.harness.config.validate import DEFAULT_CONFIG, load_config, validate_config

__all__ = ["DEFAULT_CONFIG", "ConfigError", "build_schema", "load_config", "plan_hashes", "planned_runs",
           "resolve_run", "run_hash", "task_data_params", "task_resources", "validate_config", "variant_params"]
