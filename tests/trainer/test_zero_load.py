"""ZeRO-3-aware loading: on 2 ranks each rank holds about half of the parameters from the moment
`model.init` is loaded, the model computes what the plainly loaded one does, and a scaled vision
learning rate reaches ZeRO-3's optimizer."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.trainer.launching import REPO, _free_port, launch_env


def test_init_loads_straight_into_zero3_shards(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(REPO / "tests" / "trainer" / "zero_load_probe.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=launch_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    full = ranks[0]["full_elements"]
    assert full > 1e6 and all(r["full_elements"] == full for r in ranks)
    for r in ranks:
        assert r["partitioned"]
        assert 0.45 < r["local_elements"] / full < 0.55  # about half of one model per rank
        assert r["max_logit_diff"] < 1e-5
        # trainer.optim.vision_lr_scale=0.25 survives ZeRO-3's optimizer: the tower's groups run at a
        # quarter of the rate, and Adam's first step moves its elements by at most that much.
        assert r["group_lrs"] == [0.00025, 0.00025, 0.001, 0.001]
        assert 0.2e-3 < r["max_change"]["vision"] <= 0.2501e-3 < 0.9e-3 < r["max_change"]["language"] <= 1.0001e-3
    assert sum(r["local_elements"] for r in ranks) >= full  # together they hold all of it (plus padding)
