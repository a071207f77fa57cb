"""Several machines in one report. Runs from different machines (device name, CPU/GPU, torch,
commit) may share a report, but never silently: accuracy is pooled across machines only where
the runs' configs are identical apart from the seed (``setup_hash``), and throughput and memory
are never pooled: with more than one machine every cost row names its machine."""
from __future__ import annotations

import pandas as pd

MACHINE_COLUMNS = ["device_name", "device", "torch", "git_commit"]


def machine_label(row) -> str:
    commit = str(row["git_commit"]) if pd.notna(row["git_commit"]) else "no commit"
    return f"{row['device_name']} ({row['device']}, torch {row['torch']}, {commit[:7]})"


def with_machines(df: pd.DataFrame) -> pd.DataFrame:
    """The runs' table with a ``machine`` column."""
    out = df.copy()
    out["machine"] = [machine_label(r) for _, r in out[MACHINE_COLUMNS].iterrows()] if len(out) else []
    return out


def machines(df: pd.DataFrame) -> list[str]:
    return sorted(df["machine"].unique()) if "machine" in df and len(df) else []


def _poolable(group: pd.DataFrame) -> bool:
    """One (task, variant)'s runs across machines may be pooled: a single setup (config apart from the seed)."""
    if "setup_hash" not in group or group["setup_hash"].isna().any():
        return False
    return group["setup_hash"].nunique() == 1


def for_accuracy(df: pd.DataFrame) -> pd.DataFrame:
    """Rows for the accuracy tables: on one machine unchanged; across machines a (task, variant) keeps
    its name where every run shares one setup, else each machine's runs become ``variant @ machine``."""
    if len(machines(df)) <= 1:
        return df
    out = df.copy()
    for (_, _), idx in out.groupby(["task", "variant"]).groups.items():
        group = out.loc[idx]
        if group["machine"].nunique() > 1 and not _poolable(group):
            out.loc[idx, "variant"] = group["variant"] + " @ " + group["machine"]
    return out


def for_cost(df: pd.DataFrame) -> pd.DataFrame:
    """Rows for throughput and memory: across machines every variant is ``variant @ machine``."""
    if len(machines(df)) <= 1:
        return df
    out = df.copy()
    out["variant"] = out["variant"] + " @ " + out["machine"]
    return out


def machines_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per machine: what identifies it and how many runs it holds."""
    if not len(df):
        return pd.DataFrame()
    g = df.groupby("machine", sort=True)
    return g.agg(device_name=("device_name", "first"), device=("device", "first"), torch=("torch", "first"),
                 commit=("git_commit", "first"), host=("host", lambda h: ", ".join(sorted(set(map(str, h))))),
                 runs=("seed", "size")).reset_index()
