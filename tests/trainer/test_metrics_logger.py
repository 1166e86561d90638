"""The metrics log and its progress bar follow the run's steps."""

import json
from pathlib import Path

from trainer.config import LoggingConfig
from trainer.logging import MetricsLogger


def test_the_bar_follows_steps_not_records(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path, LoggingConfig(wandb_mode="disabled"), is_main=True, run_config=None,
                           start_step=0, total_steps=3)
    logger.log({"step": 0, "eval/accuracy": 0.25})  # the step-0 evaluation: no step trained yet
    assert logger.bar.n == 0
    logger.log({"step": 1, "loss": 0.5})
    logger.log({"step": 2, "loss": 0.25, "eval/accuracy": 0.5})
    assert logger.bar.n == 2
    assert logger.bar.postfix == "loss=0.2500"
    logger.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]


def test_a_run_that_skips_a_tenth_of_its_records_says_so_once(caplog):
    """The start-up check passes on one usable record; a wrong image root can still drop every
    image record. The log says so once, with the reasons, from 64 records read on."""
    import logging
    from collections import Counter

    import torch

    from trainer.distributed import DistInfo
    from trainer.supervised import PackedBatches

    batches = PackedBatches("sft", loader=None, info=DistInfo(0, 1, 0, torch.device("cpu")), grad_accum=1, rows=1,
                            seq_len=16)
    with caplog.at_level(logging.WARNING, logger="ponder"):
        batches._report_mass_skips(Counter(missing_image=30), documents=20)  # 50 read: too few to tell
        batches._report_mass_skips(Counter(missing_image=5), documents=95)  # 5%
        batches._report_mass_skips(Counter(missing_image=153, bad_format=2), documents=76)
        batches._report_mass_skips(Counter(missing_image=300), documents=80)  # said already
        other_rank = PackedBatches("sft", loader=None, info=DistInfo(1, 2, 1, torch.device("cpu")), grad_accum=1,
                                   rows=1, seq_len=16)
        other_rank._report_mass_skips(Counter(missing_image=153), documents=76)  # rank 0 says it for all
        # a mixture's source that loses every record, within a total under a tenth: said on its own, once
        batches._report_mass_skips(Counter(missing_image=64), documents=0, source="source laion")
        batches._report_mass_skips(Counter(missing_image=90), documents=0, source="source laion")
    said = [r.getMessage() for r in caplog.records]
    assert said == ["sft: 155 of the 231 records read so far were skipped (missing_image 153, bad_format 2); "
                    "docs/data.md lists each reason's fix",
                    "sft source laion: 64 of the 64 records read so far were skipped (missing_image 64); "
                    "docs/data.md lists each reason's fix"]


def test_packing_drops_count_once_in_the_mass_skip_ratio(caplog, tmp_path, monkeypatch):
    """The packer counts a document it drops (longer than a row) among its documents, and the
    loader among its skips: the ratio takes it once."""
    import logging

    import torch
    import torch.distributed as dist

    from trainer.distributed import DistInfo
    from trainer.supervised import PackedBatches

    class Loader:
        def stats(self):  # 64 records read: 7 packed, 57 dropped as too long (89%), 0 other skips
            return {"skipped": {"longer_than_seq_len": 57}, "documents": 64, "documents_dropped": 57}

    monkeypatch.setattr(dist, "all_gather_object", lambda out, obj: out.__setitem__(0, obj))
    batches = PackedBatches("sft", loader=Loader(), info=DistInfo(0, 1, 0, torch.device("cpu")), grad_accum=1, rows=1,
                            seq_len=16)
    with caplog.at_level(logging.WARNING, logger="ponder"):
        assert batches.log_stats()["documents"] == 64
    assert [r.getMessage() for r in caplog.records] == [
        "sft: 57 of the 64 records read so far were skipped (longer_than_seq_len 57); docs/data.md lists each "
        "reason's fix"]
