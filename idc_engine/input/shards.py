"""Which shards of a split an input pipeline reads, checked against the manifest, and which shard
is at fault when TensorFlow reports lost data."""

import dataclasses
import os
import re
import warnings

import tensorflow as tf

from idc_engine.data import manifest as manifest_lib
from idc_engine.data import records
from idc_engine.data.manifest import ManifestError

READ_BUFFER_BYTES = 1 << 20      # TFRecordDataset's read buffer


class ShardError(ManifestError):
    """A shard that is there but cannot be read in full (truncated, corrupt); names the file."""


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """What one input pipeline reads of a split."""
    data_dir: str
    split: str
    paths: list                  # absolute shard paths this pipeline reads
    image_encoding: str
    image_shape: tuple
    num_examples: int | None     # records this pipeline yields per epoch, when known
    record_shard: tuple | None   # (num_pipelines, pipeline_id) when shards are too few to share


def _image_encoding(manifest: dict, data_dir: str) -> str:
    encoding = manifest.get("image_encoding", "raw")
    if encoding not in records.IMAGE_ENCODINGS:
        raise ManifestError(f"{manifest_lib.manifest_path(data_dir)!r} has image_encoding "
                            f"{encoding!r}; this idc_engine reads {records.IMAGE_ENCODINGS}")
    return encoding


def _check_shard_sizes(data_dir: str, info: dict) -> None:
    """Truncated shards caught by one stat() each, before TF fails deep inside iteration.

    TF's DataLossError for a truncated record does not name the file; the manifest records each
    shard's size, so comparing sizes names it for the cost of a stat.
    """
    for shard in info.get("shards", []):
        if "num_bytes" not in shard:
            continue
        path = os.path.join(data_dir, shard["file"])
        size = os.path.getsize(path)
        if size != shard["num_bytes"]:
            raise ShardError(f"shard {path!r} has {size:,} bytes but "
                             f"{manifest_lib.manifest_path(data_dir)!r} says {shard['num_bytes']:,}: "
                             "it is truncated or was modified; copy it again or re-run "
                             "python -m idc_engine.convert")


def split_source(data_dir: str, split: str, input_context=None) -> SplitSource:
    """Reads the manifest, checks the split's shards and picks this input pipeline's share.

    Each pipeline of `input_context` reads distinct shards (shard i goes to pipeline
    i % num_input_pipelines). With fewer shards than pipelines every pipeline reads all shards
    and keeps every n-th record instead (slower: each reads everything), with a warning.
    Raises ManifestError (or its subclass ShardError) naming what is missing or broken.
    """
    manifest = manifest_lib.load_manifest(data_dir)
    info = manifest_lib.split_info(manifest, split, data_dir)
    paths = manifest_lib.split_files(data_dir, split, manifest)
    if not paths:
        raise ManifestError(f"split {split!r} of {manifest_lib.manifest_path(data_dir)!r} "
                            "lists no shards")
    _check_shard_sizes(data_dir, info)
    counts = {os.path.join(data_dir, s["file"]): s.get("num_examples")
              for s in info.get("shards", [])}
    record_shard = None
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    if num_pipelines > 1:
        pipeline_id = input_context.input_pipeline_id
        if len(paths) >= num_pipelines:
            paths = paths[pipeline_id::num_pipelines]
        else:
            warnings.warn(f"split {split!r} has {len(paths)} shards for {num_pipelines} input "
                          "pipelines: each pipeline reads every shard and keeps every "
                          f"{num_pipelines}-th record. Convert with --min_shards>={num_pipelines} "
                          "so each pipeline reads its own files.", stacklevel=3)
            record_shard = (num_pipelines, pipeline_id)
    known = [counts.get(p) for p in paths]
    num_examples = None  # every n-th record of a shard: not listed anywhere
    if record_shard is None and None not in known:
        num_examples = sum(known)
    elif record_shard is None and num_pipelines == 1:
        num_examples = info.get("num_examples")
    return SplitSource(data_dir, split, paths, _image_encoding(manifest, data_dir),
                       tuple(manifest.get("image_shape", records.IMAGE_SHAPE)), num_examples,
                       record_shard)


def check_record_count(data_dir: str, split: str, count: int, expected: int) -> None:
    """Raises ShardError when a full read of a split found another count than the manifest's."""
    if count != expected:
        raise ShardError(f"split {split!r} of {data_dir!r}: read {count:,} records where the "
                         f"manifest lists {expected:,}; a shard was modified after conversion")


def explain_data_loss(data_dir: str, split: str, error: Exception | None = None) -> ShardError:
    """Finds which shard of a split is corrupt after a tf.errors.DataLossError.

    TF's message ("truncated record at 992938") does not say which file. This re-reads each shard
    on its own (a full read of the split, paid only after a failure) and returns a ShardError that
    names the first unreadable one:

        except tf.errors.DataLossError as e:
            raise shards.explain_data_loss(data_dir, "train", e) from e
    """
    for path in manifest_lib.split_files(data_dir, split):
        try:
            tf.data.TFRecordDataset(path, buffer_size=READ_BUFFER_BYTES).reduce(
                tf.constant(0, tf.int64), lambda n, _: n + 1)
        except tf.errors.DataLossError as e:
            reason = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", e.message).strip()
            return ShardError(f"shard {path!r} is corrupt or truncated ({reason}); "
                              "copy it again or re-run python -m idc_engine.convert")
    detail = f" ({error})" if error is not None else ""
    return ShardError(f"split {split!r} of {data_dir!r} failed to read{detail}, but every shard "
                      "reads in full on its own now: was a file replaced while training?")
