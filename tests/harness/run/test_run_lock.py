"""A run folder is one trainer's at a time: a second one refuses, says who holds it, and writes nothing."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from attnbench.harness import cli
from attnbench.harness.run.train import RUN_LOCK, RunFolderBusy, train_run
from attnbench.tasks.base import save_prepared
from conftest import tiny_run

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from attnbench.harness.run.train import own_run_folder
    own_run_folder(Path(sys.argv[1]), "listops/full/seed0")
    print("held", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def held_folder(tmp_path):
    """A run folder that another process (a trainer stand-in) holds."""
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield folder, holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_second_trainer_refuses_and_names_the_holder(held_folder, tiny_listops_data):
    folder, holder = held_folder
    with pytest.raises(RunFolderBusy, match=rf"run folder {folder} is in use: listops/full/seed0 is being trained "
                                            rf"by pid {holder.pid} on host"):
        train_run(tiny_run(), tiny_listops_data, folder, bar=False)
    assert sorted(p.name for p in folder.iterdir()) == [RUN_LOCK]  # no record, checkpoint or curve written
    holder.kill()
    holder.wait()  # the kernel drops a dead holder's lock: no clean-up needed
    assert train_run(tiny_run(), tiny_listops_data, folder, bar=False)["status"] == "ok"
    assert json.loads((folder / RUN_LOCK).read_text())["run_id"] == "listops/full/seed0"


@pytest.mark.slow
def test_attnbench_train_on_a_busy_folder_is_one_line_and_exit_2(held_folder, tiny_listops_data, tmp_path, capsys):
    folder, holder = held_folder
    run = tiny_run()
    data = tmp_path / "dataset.pt"
    save_prepared(data, "listops", run["task"]["data"], tiny_listops_data)
    rc = cli.main(["train", "--task", "listops", "--variant", "full", "--seed", str(run["seed"]), "--data", str(data),
                   "--run-config", json.dumps(run), "--out", str(folder), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"pid {holder.pid}" in err and "Traceback" not in err


@pytest.mark.slow
def test_one_process_trains_run_after_run_in_one_folder(tmp_path, tiny_listops_data):
    for _ in range(2):  # the lock is given back when a run ends
        assert train_run(tiny_run(), tiny_listops_data, tmp_path, bar=False)["status"] == "ok"
