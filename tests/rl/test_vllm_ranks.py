"""One vLLM engine over 2 CPU ranks inside torchrun (external_launcher, tensor parallel): each rank
hands in its own share and gets its own results; after a ZeRO-3 update and the weight sync the
engine's greedy tokens and log-probs are the updated trainer model's. (One engine per rank, each
serving its share, runs in tests/rl/test_rl_vllm_run.py; the probe takes tp=1 as well.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.trainer.launching import REPO, _free_port, launch_env

pytest.importorskip("vllm")


def test_tensor_parallel_engine_follows_a_zero3_update(tmp_path):
    tp = 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(REPO / "tests" / "rl" / "vllm_ranks_probe.py"), str(tmp_path), str(tp)]
    proc = subprocess.run(cmd, env=launch_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["questions"] != ranks[1]["questions"]  # each rank asked for its own share
    for rank in ranks:
        for phase in ("before", "after"):
            for got in rank[phase]:
                # The tokens are the trainer's greedy continuation of this rank's own prompts
                # (up to exact ties), with the trainer's log-probs.
                assert len(got["tokens"]) == 12
                gaps = [abs(a - b) for a, b in zip(got["engine_logprobs"], got["trainer_logprobs"])]
                assert max(gaps) < 1e-4
                agree = sum(t == g for t, g in zip(got["tokens"], got["trainer_greedy"]))
                assert agree >= len(got["tokens"]) - 1
        # The update moved the policy: the old tokens' log-probs under the new weights differ.
        stale = [max(abs(a - b) for a, b in zip(s, b["engine_logprobs"]))
                 for s, b in zip(rank["stale_under_updated"], rank["before"])]
        assert min(stale) > 1e-2
        assert rank["after"] != rank["before"] and rank["sync_dir_left"] == []
