"""Packing efficiency at seq_len 8192 on a realistic length mix, and reader throughput.

    python bench/packing.py [--docs 20000] [--seq-len 8192]

Prints (1) real tokens / token slots for our packer (split and no-split) beside padding one
document per row, on a long-tailed mix of interleaved documents (text lengths lognormal, 0-4
images of 64-1024 tokens); (2) samples/s of one reader stream (decode, resize, patchify, tokenize,
pack) on synthetic shards, packed vs one-document-per-row padding. Target: efficiency >= 0.97.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from data_pipelines.document import DocumentBuilder, Visual
from data_pipelines.interleaved import InterleavedDocuments
from data_pipelines.packing import Packer, PackingConfig
from data_pipelines.processor import VisionProcessor
from data_pipelines.reader import PackedLoader, ReaderConfig, ShardStream
from data_pipelines.shards import write_shards
from data_pipelines.synthetic import make_interleaved_corpus, make_length_mix
from data_pipelines.tokenizer import build_tiny_tokenizer

NO_PIXELS = Visual(torch.empty(0, 1176), torch.tensor([1, 2, 2]))  # packing looks at lengths only


def length_docs(num_docs: int, seed: int):
    for i, lengths in enumerate(make_length_mix(num_docs, seed)):
        doc = DocumentBuilder(f"d{i}")
        pieces = len(lengths.image_tokens) + 1
        text_per_piece = max(1, lengths.text_tokens // pieces)
        doc.add_tokens([0] * text_per_piece, train=True)
        for n in lengths.image_tokens:
            doc.add_visual([0] * (n + 2), [0] + [1] * n + [0], NO_PIXELS, "image")
            doc.add_tokens([0] * text_per_piece, train=True)
        yield doc.build()


def packing_efficiency(num_docs: int, seq_len: int, split: bool) -> tuple[float, dict]:
    packer = Packer(PackingConfig(seq_len=seq_len, buffer_docs=64, split_documents=split))
    for doc in length_docs(num_docs, seed=0):
        packer.add(doc)
        while packer.full:
            packer.pop_row()
    while packer.pop_row():
        pass
    return packer.stats.efficiency, dict(packer.stats.dropped)


def padding_efficiency(num_docs: int, seq_len: int) -> float:
    docs = make_length_mix(num_docs, seed=0)
    return sum(min(d.total, seq_len) for d in docs) / (len(docs) * seq_len)


def reader_throughput(shards: Path, seq_len: int, buffer_docs: int, batches: int) -> tuple[float, float]:
    tokenizer = build_tiny_tokenizer()
    documents = InterleavedDocuments(tokenizer, VisionProcessor())
    cfg = ReaderConfig(shards=str(shards), batch_rows=1, num_workers=0,
                       packing=PackingConfig(seq_len=seq_len, buffer_docs=buffer_docs, split_documents=buffer_docs > 1))
    loader = PackedLoader(ShardStream(cfg, documents, tokenizer.eos_token_id))
    started, slots, real = time.perf_counter(), 0, 0
    for i, batch in enumerate(loader):
        slots += batch.input_ids.numel()
        real += batch.num_tokens
        if i + 1 == batches:
            break
    elapsed = time.perf_counter() - started
    return loader.stats()["documents"] / elapsed, real / slots


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--reader-docs", type=int, default=300)
    args = parser.parse_args()

    print(f"== packing efficiency, seq_len {args.seq_len}, {args.docs} documents (real tokens / slots)")
    pad = padding_efficiency(args.docs, args.seq_len)
    split, _ = packing_efficiency(args.docs, args.seq_len, split=True)
    whole, dropped = packing_efficiency(args.docs, args.seq_len, split=False)
    print(f"padding, one document per row : {pad:.4f}")
    print(f"packed, split at text (pretrain): {split:.4f}  ({split / pad:.2f}x padding)  target >= 0.97")
    print(f"packed, samples whole (SFT/RL)  : {whole:.4f}  ({whole / pad:.2f}x padding), dropped {dropped}")

    with tempfile.TemporaryDirectory() as tmp:
        docs = make_interleaved_corpus(Path(tmp), args.reader_docs, seed=0)
        write_shards(docs, Path(tmp), Path(tmp) / "shards", samples_per_shard=50)
        print(f"== reader throughput, one stream (= one dataloader worker), seq_len {args.seq_len}")
        rate_p, eff_p = reader_throughput(Path(tmp) / "shards", args.seq_len, buffer_docs=64, batches=40)
        rate_b, eff_b = reader_throughput(Path(tmp) / "shards", args.seq_len, buffer_docs=1, batches=200)
        print(f"packed : {rate_p:7.1f} samples/s per worker, {eff_p:.3f} real tokens / slot")
        print(f"padding: {rate_b:7.1f} samples/s per worker, {eff_b:.3f} real tokens / slot")
        print(f"real tokens per slot, packed / padding: {eff_p / eff_b:.1f}x")


if __name__ == "__main__":
    main()
