"""Where a variant from outside the repository came from (harness/results/provenance.py): the providing
distribution and version, the defining file and its hash, what the module uses; None for in-tree classes."""
from __future__ import annotations

import hashlib
import importlib.metadata
import sys

import pytest

from attnbench.harness.conformance.template import write_template
from attnbench.harness.results.provenance import (
    describe_origin,
    origin_columns,
    variant_origin,
    variant_origins,
)
from attnbench.variants import VARIANTS

#: an import of an installed distribution (PyYAML, a dependency of attnbench), at a module's top level
USES_YAML = "import yaml\n"


@pytest.fixture
def on_path(tmp_path, monkeypatch):
    """``tmp_path`` on sys.path; the modules the test imports from it are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("provattn", "provpkg")):
            del sys.modules[name]


def test_a_plain_file_is_named_with_its_hash_and_what_it_uses(on_path):
    path, cls = write_template("provattn", on_path)
    path.write_text(path.read_text().replace("import math\n", "import math\n" + USES_YAML))
    origin = variant_origin(f"provattn:{cls}")
    assert origin is not None
    assert origin["distribution"] is None and origin["version"] is None  # not installed as a package
    assert origin["file"] == "provattn.py" and origin["found_in"] == str(on_path)
    assert origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert origin["uses"] == {"PyYAML": importlib.metadata.version("PyYAML")}  # not torch nor attnbench
    text = describe_origin(origin)
    assert text.startswith("not installed as a package, provattn.py sha256:" + origin["sha256"])
    assert f"uses PyYAML {importlib.metadata.version('PyYAML')}" in text


def test_the_hash_follows_the_files_contents(on_path):
    path, cls = write_template("provattn2", on_path)
    first = variant_origin(f"provattn2:{cls}")
    path.write_text(path.read_text() + "\n# edited\n")
    assert first is not None and variant_origin(f"provattn2:{cls}")["sha256"] != first["sha256"]


def test_an_installed_package_gives_its_distribution_and_version(on_path):
    """A package with its dist-info beside it on sys.path, as pip leaves one: the module sits in a sub-package."""
    pkg = on_path / "provpkg" / "layers"
    pkg.mkdir(parents=True)
    (on_path / "provpkg" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    write_template("attn", pkg)
    info = on_path / "provpkg-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: provpkg\nVersion: 0.3.1\n")
    (info / "top_level.txt").write_text("provpkg\n")
    origin = variant_origin("provpkg.layers.attn:AttnAttention")
    assert origin is not None
    assert (origin["distribution"], origin["version"]) == ("provpkg", "0.3.1")
    assert origin["file"] == "provpkg/layers/attn.py" and origin["found_in"] == str(on_path)
    assert describe_origin(origin).startswith("provpkg 0.3.1, provpkg/layers/attn.py sha256:")


def test_in_tree_classes_and_no_source_have_no_origin():
    assert variant_origin(None) is None
    assert variant_origin("attnbench.variants.linear:LinearAttention") is None  # a built-in under a second name
    assert describe_origin(None) == ""


def test_a_source_that_cannot_be_loaded_is_said_not_raised():
    origin = variant_origin("no_such_module_anywhere:X")
    assert origin is not None and origin["source"] == "no_such_module_anywhere:X"
    assert "cannot import module" in origin["error"]
    assert describe_origin(origin).startswith("no_such_module_anywhere:X: origin unknown")


def test_origins_of_registered_variants_and_the_summary_columns(on_path):
    _, cls = write_template("provattn3", on_path)
    VARIANTS.register_source("provmine", f"provattn3:{cls}")
    VARIANTS.register_source("provlinear", "attnbench.variants.linear:LinearAttention")
    origins = variant_origins(["full", "provmine", "provlinear", "not_registered"])
    assert list(origins) == ["provmine"]
    record = {"config": {"variant": {"name": "provmine", "source": f"provattn3:{cls}"}},
              "variant_origin": origins["provmine"]}
    columns = origin_columns(record)
    assert columns["variant_source"] == f"provattn3:{cls}"
    assert columns["variant_sha256"] == origins["provmine"]["sha256"]
    assert columns["variant_origin"] == describe_origin(origins["provmine"])
    older = origin_columns({"config": {"variant": {"name": "full"}}})  # in-tree, or a record from before origins
    assert older == {"variant_source": None, "variant_origin": None, "variant_sha256": None}
