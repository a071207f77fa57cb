"""A researcher's own image data as a named task through snakemake: a Fashion-MNIST-like CSV of pixels (made
here from scikit-learn's digits, 10 classes given names) runs as `fashion: {task: image, ...}` beside a second
instance of the same task, and the report says what each ran on."""
from __future__ import annotations

import csv
import json

import pytest
import yaml
from sklearn.datasets import load_digits

from snakemake_runs import snakemake

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def write_pixel_csv(path, n: int = 400) -> None:
    digits = load_digits()
    pixels = (digits.images[:n] * (255 / 16)).round().astype(int).reshape(n, -1)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["label", *(f"pixel{i}" for i in range(pixels.shape[1]))])
        out.writerows([int(label), *row] for label, row in zip(digits.target[:n], pixels, strict=True))


@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("named")
    write_pixel_csv(work / "fashion.csv")
    config = {
        "seeds": [0], "variants": {"full": {}}, "bench": {"enabled": False},
        "model": {"layers": 1, "dim": 16, "heads": 2, "mlp_dim": 32},
        "train": {"steps": 10, "batch_size": 16, "eval_every": 5, "warmup_steps": 2},
        "tasks": {
            "fashion": {"task": "image", "data": {"source": "files", "path": "fashion.csv", "label_names": NAMES}},
            "digits8": {"task": "image", "data": {"source": "digits", "max_train": 200}},
        },
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


@pytest.mark.slow
def test_a_csv_of_pixels_runs_as_a_named_image_task_and_the_report_names_its_data(named_run):
    record = json.loads((named_run / "results/runs/fashion/full/seed0/record.json").read_text())
    assert record["task"] == "fashion" and record["status"] == "ok"
    assert (record["config"]["task"]["name"], record["config"]["task"]["instance"]) == ("image", "fashion")
    assert record["data"]["label_names"] == NAMES and record["data"]["num_classes"] == 10
    other = json.loads((named_run / "results/runs/digits8/full/seed0/record.json").read_text())
    assert other["data"]["key"] != record["data"]["key"]
    summary = (named_run / "reports/summary.md").read_text()
    data = summary.split("## Data", 1)[1].split("\n## ", 1)[0]
    fashion = next(line for line in data.splitlines() if line.startswith("| fashion"))
    assert "| image |" in fashion and "fashion.csv" in fashion
    assert "10: T-shirt/top, Trouser, Pullover" in fashion and "Ankle boot" in fashion
    assert "train " in fashion and " / test " in fashion
    assert any(line.startswith("| digits8") for line in data.splitlines())
