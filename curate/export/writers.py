"""The three layouts an export is written in. Each writer gets the samples with their PNG bytes."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.export.select import TRAIN, VALIDATION, Sample, as_record, label_vector

ROW_GROUP_ROWS = 100  # the datasets library's choice for image data
Encoded = tuple[Sample, bytes]  # a sample and its image as PNG bytes at the export's resolution


def stylegan_name(index: int) -> str:
    """NVlabs' dataset_tool naming: a folder per thousand images."""
    return f"{index // 1000:05d}/img{index:08d}.png"


def write_stylegan(out: Path, encoded: Iterable[Encoded], vocabulary: list[str]) -> dict[str, int]:
    """dataset.zip (train) and validation.zip: stored (uncompressed) PNGs and dataset.json."""
    archives = {TRAIN: out / "dataset.zip", VALIDATION: out / "validation.zip"}
    zips = {split: zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) for split, path in archives.items()}
    labels: dict[str, list] = {TRAIN: [], VALIDATION: []}
    try:
        for sample, png in encoded:
            name = stylegan_name(len(labels[sample.split]))
            zips[sample.split].writestr(name, png)
            labels[sample.split].append([name, label_vector(sample, vocabulary)])
        for split, archive in zips.items():
            # NVlabs reads labels as a [name, vector] list; null when there is no vocabulary
            payload = {"labels": labels[split] if vocabulary else None}
            archive.writestr("dataset.json", json.dumps(payload))
    finally:
        for archive in zips.values():
            archive.close()
    if not labels[VALIDATION]:
        archives[VALIDATION].unlink()
    return {split: len(rows) for split, rows in labels.items()}


def write_imagefolder(out: Path, encoded: Iterable[Encoded], vocabulary: list[str]) -> dict[str, int]:
    """<split>/<face_id>.png and <split>/metadata.jsonl: the layout datasets' imagefolder reads."""
    counts = {TRAIN: 0, VALIDATION: 0}
    handles = {}
    try:
        for sample, png in encoded:
            folder = out / sample.split
            if sample.split not in handles:
                folder.mkdir(parents=True)
                handles[sample.split] = (folder / "metadata.jsonl").open("w", encoding="utf-8")
            name = f"{sample.face_id}.png"
            (folder / name).write_bytes(png)
            record = {
                "file_name": name,
                **as_record(sample),
                "label_vector": label_vector(sample, vocabulary),
            }
            handles[sample.split].write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[sample.split] += 1
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def parquet_schema(vocabulary: list[str]) -> pa.Schema:
    """The rows of the Parquet export. `image` is a struct of bytes and path, as the datasets
    library stores an Image feature."""
    return pa.schema(
        [
            pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            pa.field("face_id", pa.string()),
            pa.field("md5", pa.string()),  # of the original image's bytes
            pa.field("sources", pa.list_(pa.string())),  # posts that stored it: safebooru:6077620 …
            pa.field("urls", pa.list_(pa.string())),
            pa.field("labels", pa.list_(pa.string())),
            # over the vocabulary, in its order; a fixed size only when there are labels (pyarrow
            # and the datasets library cannot read back a fixed-size list of size 0)
            pa.field("label_vector", pa.list_(pa.float32(), len(vocabulary) or -1)),
            pa.field("tag_names", pa.list_(pa.string())),  # the tagger's stored probabilities
            pa.field("tag_scores", pa.list_(pa.float32())),
            pa.field("filter_score", pa.float32()),
            pa.field("split", pa.string()),
        ],
        metadata={
            "curate.vocabulary": json.dumps(vocabulary),
            "huggingface": json.dumps(_hf_features(vocabulary)),
        },
    )


def _hf_features(vocabulary: list[str]) -> dict:
    """The datasets library's description of the columns, so its parquet loader decodes `image`."""
    text, number = {"dtype": "string", "_type": "Value"}, {"dtype": "float32", "_type": "Value"}
    texts, numbers = {"feature": text, "_type": "Sequence"}, {"feature": number, "_type": "Sequence"}
    vector = {"feature": number, "length": len(vocabulary) or -1, "_type": "Sequence"}
    features = {
        "image": {"_type": "Image"}, "face_id": text, "md5": text, "sources": texts, "urls": texts,
        "labels": texts, "label_vector": vector, "tag_names": texts, "tag_scores": numbers,
        "filter_score": number, "split": text,
    }  # fmt: skip
    return {"info": {"features": features}}


def write_parquet(
    out: Path, encoded: Iterable[Encoded], vocabulary: list[str], shard_bytes: int = 256 << 20
) -> dict[str, int]:
    """data/<split>-NNNNN-of-NNNNN.parquet shards of about `shard_bytes` of images each."""
    schema = parquet_schema(vocabulary)
    folder = out / "data"
    folder.mkdir(parents=True)
    counts = {TRAIN: 0, VALIDATION: 0}
    shards: dict[str, list[Path]] = {TRAIN: [], VALIDATION: []}
    pending: dict[str, list[dict]] = {TRAIN: [], VALIDATION: []}
    sizes = {TRAIN: 0, VALIDATION: 0}

    def flush(split: str) -> None:
        if pending[split]:
            path = folder / f".{split}-{len(shards[split]):05d}.parquet"
            # small row groups: a trainer streaming a set larger than memory reads one image at a time,
            # and a reader fetches whole row groups (a 256 MB group would be read per image)
            table = pa.Table.from_pylist(pending[split], schema=schema)
            pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)
            shards[split].append(path)
            pending[split], sizes[split] = [], 0

    for sample, png in encoded:
        names = sorted(sample.tag_scores)
        pending[sample.split].append(
            {
                "image": {"bytes": png, "path": f"{sample.face_id}.png"},
                **{k: v for k, v in as_record(sample).items() if k != "split"},
                "label_vector": label_vector(sample, vocabulary),
                "tag_names": names,
                "tag_scores": [sample.tag_scores[n] for n in names],
                "split": sample.split,
            }
        )
        counts[sample.split] += 1
        sizes[sample.split] += len(png)
        if sizes[sample.split] >= shard_bytes:
            flush(sample.split)
    for split in shards:
        flush(split)
        for number, path in enumerate(shards[split]):  # the datasets library's shard names
            path.rename(folder / f"{split}-{number:05d}-of-{len(shards[split]):05d}.parquet")
    return counts
