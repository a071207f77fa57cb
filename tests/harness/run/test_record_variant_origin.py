"""A run of a variant from outside the repository records where its code came from (``variant_origin``:
package, file, hash), outside its config hash; the runs' table carries it."""
from __future__ import annotations

import hashlib
import sys

import pytest

from attnbench.harness.config import resolve_run, validate_config
from attnbench.harness.conformance.template import write_template
from attnbench.harness.core.hashing import config_hash
from attnbench.harness.results.aggregate import record_row
from attnbench.harness.results.records import read_record
from attnbench.harness.run.train import train_run
from conftest import tiny_config


@pytest.mark.slow
def test_a_from_variants_record_carries_its_origin_outside_the_hash(tmp_path, monkeypatch, tiny_listops_data):
    code = tmp_path / "code"
    path, cls = write_template("originattn", code)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.delitem(sys.modules, "originattn", raising=False)
    config = validate_config(tiny_config(variants={"full": {}, "mine": {"from": f"originattn:{cls}"}}))
    run = resolve_run(config, "listops", "mine", 0)
    before = config_hash(run)
    record = train_run(run, tiny_listops_data, tmp_path / "run", bar=False)
    sys.modules.pop("originattn", None)
    assert record["status"] == "ok"
    origin = record["variant_origin"]
    assert origin["source"] == f"originattn:{cls}" and origin["file"] == "originattn.py"
    assert origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert origin["distribution"] is None  # a plain file: not installed as a package
    # the origin is beside the config, not in it: the run's hash is what it was without it
    assert "variant_origin" not in record["config"] and record["config_hash"] == before == config_hash(run)
    stored = read_record(tmp_path / "run" / "record.json")  # valid under the record schema
    assert stored["variant_origin"] == origin
    row = record_row(stored, tmp_path / "run" / "record.json")
    assert row["variant_source"] == f"originattn:{cls}" and row["variant_sha256"] == origin["sha256"]
    assert row["variant_origin"].startswith(f"not installed as a package, originattn.py sha256:{origin['sha256']}")
