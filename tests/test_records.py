"""The TF-free record writer against TensorFlow's own parser."""

import numpy as np
import tensorflow as tf

from idc_engine.data import records


def test_hand_encoded_example_equals_tensorflows(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, records.IMAGE_SHAPE, dtype=np.uint8).tobytes()
    fields = dict(label=1, patient_id="10253", x=2**40 + 3, y=51, height=37, width=50)
    ours = records.encode_example(image, **fields)
    parsed = tf.train.Example.FromString(ours)
    feature = parsed.features.feature
    assert feature["image"].bytes_list.value == [image]
    assert feature["patient_id"].bytes_list.value == [b"10253"]
    for name in ("label", "x", "y", "height", "width"):
        assert feature[name].int64_list.value == [fields[name]]
    assert set(feature) == set(records.FEATURES)


def test_framed_records_read_back_with_crc_checks(tmp_path):
    path = tmp_path / "shard.tfrecord"
    payloads = [records.encode_example(bytes([i]) * records.IMAGE_BYTES, i % 2, "1", i, i, 50, 50)
                for i in range(5)]
    path.write_bytes(b"".join(records.frame_record(p) for p in payloads))
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert read == payloads
    # a flipped byte in the payload breaks the data CRC, and TensorFlow notices
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))
    try:
        list(tf.data.TFRecordDataset(str(path)))
    except tf.errors.DataLossError:
        pass
    else:
        raise AssertionError("a corrupted record was read without error")


def test_write_example_writes_exactly_the_framed_encoded_record():
    """The converter's streaming writer must give the same bytes as frame_record(encode_example):
    raw and PNG-sized images, small and large positions, padded sizes, another patient."""
    rng = np.random.default_rng(1)
    cases = [(rng.integers(0, 256, records.IMAGE_BYTES, dtype=np.uint8).tobytes(),
              0, "10253", 1001, 51, 50, 50),
             (bytes(records.IMAGE_BYTES), 1, "8863", 2**40 + 3, 0, 37, 21),
             (rng.bytes(3001), 1, "9036", 127, 128, 50, 50),  # a PNG-sized image
             (rng.bytes(3001), 0, "9036", 16384, 5, 50, 50)]
    for image, *fields in cases * 2:  # twice: the second pass comes from the caches
        pieces = []
        records.write_example(pieces.append, image, *fields)
        assert b"".join(pieces) == records.frame_record(records.encode_example(image, *fields))
