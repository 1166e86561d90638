"""Records (JSONL files or any local HF `datasets` source) cut into virtual shards for the reader.

`RecordShards` is a `reader.SampleSource`: shard k holds records `order[k*N:(k+1)*N]`, where
`order` is a seeded permutation of all records (or the file order without shuffling). So the
reader's stream assignment, shard shuffling per epoch, workers and exact state restore work on
records exactly as on tar shards. A sample is `{"__key__": "file.jsonl:LINE" | "ROW",
"record": JSON bytes | dict, "root": directory relative image paths are read from}`.

Formats (`fmt="auto"` picks by the path): `.jsonl` files (or a directory of them) are indexed by
line offset and parsed one record at a time, so a record's content may be a string in one line
and a list in the next; `.parquet` / `.json` files or directories go through
`datasets.load_dataset`, a `save_to_disk` directory through `datasets.load_from_disk`.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import hub_card

FORMATS = ("auto", "jsonl", "parquet", "json", "disk")


class DataSourceError(ValueError):
    """Data that cannot be read as given (several splits, none found): the entry points print it as
    one `ponder:` line, not a traceback."""


class RecordsNotFound(DataSourceError, FileNotFoundError):
    """No records where the run was pointed."""


def resolve_records(spec: str, fmt: str = "auto") -> tuple[str, list[Path]]:
    """(format, files) of a file, directory or glob; a `save_to_disk` directory is one "file"."""
    if fmt not in FORMATS:
        raise ValueError(f"record format must be one of {FORMATS}, got {fmt!r}")
    if not spec:
        raise ValueError("no record source given: a .jsonl/.parquet/.json file, a directory or a glob")
    path = Path(spec)
    saved = is_saved_dataset(path)
    if fmt == "disk" or (fmt == "auto" and saved):
        if not saved:
            raise RecordsNotFound(f"{spec!r} is not a datasets.save_to_disk directory")
        return "disk", [path]
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif "{" in spec:  # a brace range of files or globs ("part-{00000..00009}.parquet"): each must exist
        from .reader import expand_paths

        files = [Path(p) for p in expand_paths(spec, "records") if os.path.isfile(p)]
    else:
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))  # `**`: any depth
    if not path.is_file():  # a folder's or a glob's files, less the difficulty sidecars grading writes
        files = [p for p in files if not p.name.endswith(".difficulty.jsonl")]
    if fmt == "auto":
        fmt = next((f for f in ("jsonl", "parquet", "json") if any(p.suffix == f".{f}" for p in files)), "")
    chosen = files if path.is_file() else [p for p in files if p.suffix == f".{fmt}"]
    if not fmt or not chosen:
        raise RecordsNotFound(f"no .jsonl, .parquet or .json records found for {spec!r}")
    if others := [p.name for p in files if p.suffix in (".jsonl", ".parquet", ".json") and p.suffix != f".{fmt}"]:
        logging.getLogger(__name__).warning("%s: reading its %d .%s files; %d files of other record formats are "
                                            "not read (e.g. %s): point at one format's files", spec, len(chosen),
                                            fmt, len(others), others[0])
    if path.is_dir():
        _refuse_mixed_splits(path, chosen, f"{spec} holds")
    elif not path.is_file() and "{" not in spec:  # a glob (its shard prefixes may be sources: c4/*-of-*.jsonl
        # over en- and fr- shards); a brace list names its files one by one
        _refuse_mixed_splits(_glob_base(spec), chosen, f"{spec!r} matches files of", split_words_only=True)
    return fmt, chosen


def _glob_base(pattern: str) -> Path:
    """The folder a glob's matches lie under: its parts before the first wildcard
    (`MMMU/*/validation-*.parquet`: MMMU)."""
    parts = Path(pattern).parent.parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return Path(*parts[:fixed]) if fixed else Path(".")


def is_pattern(spec: str | Path) -> bool:
    """A glob or brace pattern (not a file whose name holds `[` or `{`): resolve_records checks
    that it names files."""
    return (glob.has_magic(str(spec)) or "{" in str(spec)) and not os.path.exists(spec)


def is_saved_dataset(path: Path) -> bool:
    """A `datasets` save_to_disk directory (a Dataset, or a DatasetDict of splits)."""
    return path.is_dir() and ((path / "dataset_info.json").exists() and (path / "state.json").exists()
                              or (path / "dataset_dict.json").exists())


def pattern_stem(name: str) -> str:
    """What a pattern's file name starts with: `testmini-*.parquet` -> `testmini` ("" for `*.jsonl`)."""
    return re.split(r"[*?\[{]", name)[0].rstrip("-_.")


SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev", "eval")
SAME_SPLIT = {"valid": "validation", "val": "validation"}  # val-0.jsonl beside validation-1.jsonl: one split
SPLIT_FILE = re.compile(rf"({'|'.join(SPLIT_NAMES)})(?=[-_.])")  # the hub's data/<split>-*.parquet
# a split's shard as the hub names it, whatever the split's name (testmini-00000-of-00001.parquet,
# VIM-Bench's vim_mathvista_testmini-...; older uploads add a hash: test-00000-of-00002-6b81bd7f.parquet)
HUB_SHARD_FILE = re.compile(r"(\w+?)-\d{5}-of-\d{5}(?:-[0-9a-f]+)?\.")


def _split_of(directory: Path, file: Path) -> tuple[str, str] | None:
    """(split, what to point at for it) of a file in a split folder (the parquet conversion's
    default/train/0000.parquet: that folder) or named for one (data/train-00000-of-00001.parquet:
    a glob)."""
    rel = file.relative_to(directory)
    for depth, part in enumerate(rel.parts[:-1]):
        if part in SPLIT_NAMES:
            return part, str(directory.joinpath(*rel.parts[:depth + 1]))
    m = HUB_SHARD_FILE.match(rel.name) or SPLIT_FILE.match(rel.name)
    if not m:
        return None
    separator = rel.name[m.end(1)]  # test-*.parquet, not test*.parquet (which takes testmini's too)
    return m.group(1), str(file) if separator == "." else f"{file.parent}/{m.group(1)}{separator}*{file.suffix}"


def _refuse_mixed_splits(directory: Path, files: list[Path], what: str, split_words_only: bool = False) -> None:
    """A downloaded hub folder holds every split (data/train-*.parquet beside data/test-*.parquet,
    or train/ beside test/): reading the folder would train on its test rows. Ask for one split; the
    same for a glob's files (`MathVerse/testmini*.parquet` takes testmini_text_only's too).
    A file's splits are what the folder's card says (hub_card.py) and what its name says; beside a
    card, only a split word (train, test, ...) in a name counts, so configs sharing a split's name
    (languages as en-00000-of-00001, MMMU's subjects) are one set, and a card's catch-all `*.jsonl`
    does not merge train.jsonl with test.jsonl."""
    card_root, card = hub_card.card_splits(directory)
    by_card: dict[str, set[str]] = {}
    by_name: dict[str, set[str]] = {}
    for f in files:
        for split, target in hub_card.splits_of(card_root, card, f) if card else []:
            by_card.setdefault(split, set()).add(target)
        named = _split_of(directory, f)
        if named and (not (card or split_words_only) or named[0] in SPLIT_NAMES):
            by_name.setdefault(SAME_SPLIT.get(named[0], named[0]), set()).add(named[1])
    # what to point at: the files' own split glob, else the card's pattern (a catch-all `*.jsonl` would take every split)
    found = {split: by_name.get(split) or by_card[split] for split in {*by_card, *by_name}}
    if len(found) > 1:
        split = min(found, key=lambda name: (SUGGESTED_FIRST.get(name, 2), name))
        raise DataSourceError(f"{what} the splits {', '.join(sorted(found))}; point at one, "
                              f"e.g. '{_one_glob(sorted(found[split]))}'")


# Which split a refusal suggests: train, then validation; a hub's `test` (MathVista, MMMU) and `dev`
# (MMMU's few-shot examples) often hide their answers or are tiny: other splits (testmini) first.
SUGGESTED_FIRST = {"train": 0, "validation": 1, "dev": 3, "test": 4}


def _one_glob(paths: list[str]) -> str:
    """One pattern for a split's files in several folders (MMMU's <subject>/validation-*.parquet:
    MMMU/*/validation-*.parquet): the parts in which they differ become `*`; files of one name at
    several depths, `<their common folder>/**/<name>`."""
    parts = [Path(p).parts for p in paths]
    if len({len(x) for x in parts}) > 1:  # at several depths: `**` (any depth, records.py globs recursively)
        names = {x[-1] for x in parts}
        common = os.path.commonpath([os.path.dirname(p) for p in paths])
        return str(Path(common, "**", names.pop())) if len(names) == 1 else paths[0]
    return str(Path(*(x[0] if len(set(x)) == 1 else "*" for x in zip(*parts))))


def undecoded_videos(dataset: Any) -> Any:
    """`Video()` columns as their {bytes, path}: `datasets` decodes them with torchcodec, which is
    not installed (CUDA-linked); ponder decodes videos with PyAV (data_pipelines/video.py)."""
    import datasets

    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Video):
            dataset = dataset.cast_column(name, datasets.Video(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Video):  # a list of videos
            dataset = dataset.cast_column(name, datasets.List(datasets.Video(decode=False)))
    return dataset


class RecordShards:
    def __init__(self, spec: str, records_per_shard: int, shuffle: bool = True, seed: int = 0,
                 fmt: str = "auto", image_root: str | None = None, limit: int | None = None):
        """`image_root`: where relative image paths point (default: the data file's directory).
        `limit`: keep only the first `limit` records (before shuffling): held-out subsets."""
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        self.fmt, self.files = resolve_records(spec, fmt)
        self.image_root = image_root
        self._dataset = None
        self._row_starts: list[int] | None = None  # the first row of each file in the joined table
        if self.fmt == "jsonl":
            self._file_of, self._offset = _index_lines(self.files)
            count = len(self._offset)
        else:
            count = len(self._hf())
        count = count if limit is None else min(count, limit)
        if count == 0:
            raise ValueError(f"no records in {spec!r}")
        order = np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)
        self._shards = [order[i:i + records_per_shard] for i in range(0, count, records_per_shard)]
        self.num_records = count

    def __len__(self) -> int:
        return len(self._shards)

    def name(self, shard: int) -> str:
        return f"{self.files[0].parent if len(self.files) > 1 else self.files[0]}#shard{shard}"

    def samples(self, shard: int, on_error: Callable[[Exception], bool] | None = None) -> Iterator[dict]:
        """The records of a shard, in shard order (`on_error` is unused: bad records fail later,
        in the document builder, where they are counted)."""
        indices = self._shards[shard]
        if self.fmt != "jsonl":
            dataset = self._hf()
            for i in indices:
                yield {"__key__": str(int(i)), "record": dataset[int(i)], "root": self._root_of(int(i))}
            return
        handles: dict[int, Any] = {}
        try:
            for i in indices:
                f = int(self._file_of[i])
                handle = handles.get(f) or handles.setdefault(f, self.files[f].open("rb"))
                handle.seek(int(self._offset[i]))
                yield {"__key__": f"{self.files[f].name}@{int(self._offset[i])}", "record": handle.readline(),
                       "root": self.image_root or str(self.files[f].parent)}
        finally:
            for handle in handles.values():
                handle.close()

    def records(self) -> Iterator[dict]:
        """Every sample, shard after shard."""
        for shard in range(len(self)):
            yield from self.samples(shard)

    def _root_of(self, row: int) -> str:
        """Where the relative image paths of a row of a parquet / JSON / save_to_disk table point:
        data.image_root, else the folder of the file the row came from (a glob over several folders
        resolved every row against the first file's folder, and took another folder's images)."""
        if self.image_root:
            return self.image_root
        if self.fmt == "disk" or len(self.files) == 1:
            return str(self.files[0] if self.fmt == "disk" else self.files[0].parent)
        if self._row_starts is None:
            counts = [rows_in(f, self.fmt) for f in self.files]
            if sum(counts) != len(self._hf()):
                raise ValueError(f"the {self.fmt} files of {self.files[0].parent} hold {sum(counts)} rows read one by "
                                 f"one and {len(self._hf())} read together; give data.image_root")
            self._row_starts = np.cumsum([0, *counts[:-1]]).tolist()
        return str(self.files[int(np.searchsorted(self._row_starts, row, side="right")) - 1].parent)

    def _hf(self):
        if self._dataset is None:
            import datasets  # heavy; only HF sources need it

            if self.fmt == "disk":
                loaded = datasets.load_from_disk(str(self.files[0]))
                if isinstance(loaded, datasets.DatasetDict):
                    if "train" not in loaded:
                        raise ValueError(f"{self.files[0]} holds splits {list(loaded)}, none named train")
                    loaded = loaded["train"]
            else:
                loaded = load_table(self.fmt, self.files)
            self._dataset = undecoded_videos(loaded)
        return self._dataset

    def __getstate__(self) -> dict:
        # Workers reopen the dataset themselves (it is memory-mapped; cheap to reopen).
        return {**self.__dict__, "_dataset": None}


def load_table(fmt: str, files: list[Path]) -> Any:
    """Parquet or JSON files as one `datasets` table; files whose columns differ (LLaVA-Instruct's
    several .json) stop here, saying what to point at, not deep inside `datasets`."""
    import datasets

    try:
        return datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train")
    except datasets.exceptions.DatasetGenerationError as exc:
        why = str(exc.__cause__ or exc.__context__ or exc).strip().splitlines()[0][:200]
        raise ValueError(f"the {len(files)} {fmt} files under {files[0].parent} could not be read as one table "
                         f"({why}); point at the files of one layout (a file or a glob)") from exc


def rows_in(path: Path, fmt: str) -> int:
    """Rows of one parquet (its footer: nothing decoded) or JSON file."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    import datasets

    return len(datasets.load_dataset(fmt, data_files=[str(path)], split="train"))


def _index_lines(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(file index, byte offset) of every non-blank line."""
    file_of, offsets = [], []
    for f, path in enumerate(files):
        offset = 0
        with path.open("rb") as handle:
            for line in handle:
                if line.strip():
                    file_of.append(f)
                    offsets.append(offset)
                offset += len(line)
    return np.asarray(file_of, dtype=np.int32), np.asarray(offsets, dtype=np.int64)
