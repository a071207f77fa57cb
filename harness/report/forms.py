"""LRA's code's form of a mechanism beside its paper's in one report: where the runs of one variant label hold
both forms (``mechanism_form``: config/lra.yaml's and config/lra_paper.yaml's results rendered together), each
form becomes a label of its own (``lsh (LRA's code)``, ``lsh (paper)``), so that every section shows them side
by side instead of pooling them."""
from __future__ import annotations

import pandas as pd

COLUMN = "mechanism_form"


def with_forms(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each variant label whose runs hold both forms split by form; unchanged otherwise (a summary
    from before the column, or one form per label)."""
    if COLUMN not in df or df.empty:
        return df
    forms = df.groupby("variant")[COLUMN].nunique()
    both = set(forms[forms > 1].index)
    if not both:
        return df
    out = df.copy()
    split = out["variant"].isin(both) & out[COLUMN].notna()
    out.loc[split, "variant"] = out.loc[split, "variant"] + " (" + out.loc[split, COLUMN] + ")"
    return out


def form_of(runs: pd.DataFrame) -> str:
    """The form(s) a label's runs ran, for a table cell: "LRA's code", "paper", both joined, or "–" where the
    summary does not say (one from before the column)."""
    forms = sorted(set(runs[COLUMN].dropna())) if COLUMN in runs else []
    return " / ".join(forms) or "–"
