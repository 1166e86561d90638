"""A real pretraining run on the tiny recipe over a mixture of published layouts (img2dataset
captions, OBELICS parquet, plain text JSONL): per-source counters in metrics, exact resume."""

from __future__ import annotations

import pytest

from tests.public_layouts import (
    write_img2dataset,
    write_obelics_parquet,
    write_text_jsonl,
)
from tests.trainer.launching import check, launch, metrics

STEPS = 6


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture_data")
    write_img2dataset(root / "laion", shards=2, per_shard=40, seed=0, no_caption_every=9)
    write_obelics_parquet(root / "obelics" / "part-0.parquet", 40, "hf", seed=1)
    write_text_jsonl(root / "text" / "part-0.jsonl", 200, seed=2)
    entries = [f"{{name:captions,kind:captions,path:'{root}/laion/{{00000..00001}}.tar',weight:0.5}}",
               f"{{name:web,kind:obelics,path:{root}/obelics,weight:0.3,records_per_shard:10}}",
               f"{{name:text,kind:text,path:{root}/text/part-0.jsonl,weight:0.2,records_per_shard:20}}"]
    return "data.sources=[" + ",".join(entries) + "]"


def args(sources: str, run, steps: int = STEPS) -> list[str]:
    return ["recipe=pretrain_tiny", "data.shards=", sources, "data.packing.seq_len=256", "data.packing.buffer_docs=16",
            f"trainer.max_steps={steps}", "trainer.save_every=3", "logging.wandb_mode=disabled",
            "logging.progress_bar=false", f"hydra.run.dir={run}"]


def test_mixture_run_logs_sources_and_resumes_exactly(sources, tmp_path):
    full = tmp_path / "full"
    check(launch("pretrain.py", args(sources, full)))
    lines = metrics(full)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    last = lines[-1]["sources"]
    assert set(last) == {"captions", "web", "text"}
    docs = {name: s["documents"] for name, s in last.items()}
    total = sum(docs.values())
    assert total >= lines[-1]["documents"]  # drawn = packed + still in the packing buffer
    for name, weight in (("captions", 0.5), ("web", 0.3), ("text", 0.2)):
        assert abs(docs[name] - weight * total) <= 1, docs  # within a document of the weights
        assert last[name]["tokens"] > 0
    assert last["captions"]["skipped"].get("no_caption", 0) > 0
    assert lines[-1]["loss"] < lines[0]["loss"]

    resumed = tmp_path / "resumed"
    check(launch("pretrain.py", args(sources, resumed) + [f"resume={full}/checkpoints/step_3"]))
    again = metrics(resumed)
    assert [m["step"] for m in again] == [4, 5, 6]
    assert [m["loss"] for m in again] == [m["loss"] for m in lines[3:]]  # bit-identical batches
    assert [m["sources"] for m in again] == [m["sources"] for m in lines[3:]]
