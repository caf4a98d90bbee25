"""The TFRecord schema of a converted IDC patch, written without importing TensorFlow.

One `tf.train.Example` per patch. Other code (the input pipeline, `--verify`, external
checks) relies on these feature names and types:

    image       bytes   raw uint8 HWC RGB, PATCH_SIZE*PATCH_SIZE*3 bytes (or PNG bytes when the
                        manifest's `image_encoding` is "png")
    label       int64   0 = non-IDC, 1 = IDC
    patient_id  bytes   the patient folder name, e.g. b"10253"
    x, y        int64   the patch's position on the slide, from its file name
    height      int64   the patch's size before padding to PATCH_SIZE (edge patches are smaller)
    width       int64

The converter's worker processes encode records with the small protobuf writer below and frame
them with masked CRC32C: they never import TensorFlow, so they start in milliseconds and never
touch an accelerator. Tests check the bytes against TensorFlow's own parser.
"""

import functools
import struct

import google_crc32c

PATCH_SIZE = 50
CHANNELS = 3
IMAGE_SHAPE = (PATCH_SIZE, PATCH_SIZE, CHANNELS)
IMAGE_BYTES = PATCH_SIZE * PATCH_SIZE * CHANNELS
# The Kaggle patches' scale: 40x scans (~0.25 um/px) downsampled 16:1 (Janowczyk & Madabhushi
# 2016); whole-slide inference tiles a slide to this scale.
PATCH_UM_PER_PIXEL = 4.0
# How a record's image feature is stored: raw uint8 HWC bytes, or the PNG file's bytes.
IMAGE_ENCODINGS = ("raw", "png")

# Feature name -> "bytes" or "int64": the one place the schema is spelled out.
FEATURES = {
    "image": "bytes",
    "label": "int64",
    "patient_id": "bytes",
    "x": "int64",
    "y": "int64",
    "height": "int64",
    "width": "int64",
}


# --- protobuf wire format (only what tf.train.Example needs) -------------------------------
# Example { Features features = 1; }  Features { map<string, Feature> feature = 1; }
# a map entry is { string key = 1; Feature value = 2; }
# Feature { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
# BytesList { repeated bytes value = 1; }  Int64List { repeated int64 value = 1 [packed]; }
# Every field here is length-delimited: a tag byte (field << 3 | 2), a varint length, the payload.
# Lengths are computed, not measured on concatenations, so the 7.5 KB image is copied once.

_ONE_BYTE = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    if value < 0:  # int64 negatives are ten-byte two's complement varints
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache  # a function of (name, length) only: a handful of values
def _map_entry_header(name: str, feature_tag: bytes, value_length: int) -> bytes:
    """Everything of one map entry before its value bytes (the value is a list of one)."""
    value_list = 1 + len(_varint(value_length)) + value_length      # BytesList / Int64List
    feature = 1 + len(_varint(value_list)) + value_list             # Feature
    key = b"\x0a" + _varint(len(name)) + name.encode() + b"\x12"   # key = 1, then value = 2
    entry = len(key) + len(_varint(feature)) + feature
    return (b"\x0a" + _varint(entry) + key + _varint(feature)
            + feature_tag + _varint(value_list) + b"\x0a" + _varint(value_length))


@functools.lru_cache(maxsize=1 << 16)  # labels, sizes, patients and positions repeat a lot
def _int64_entry(name: str, value: int) -> bytes:
    """A whole map entry of an int64 feature with one value."""
    value_bytes = _varint(value)
    return _map_entry_header(name, b"\x1a", len(value_bytes)) + value_bytes


def _bytes_entry(name: str, value: bytes) -> bytes:
    """A whole map entry of a short bytes feature with one value (the patient id; cached with
    the label by _label_and_patient)."""
    return _map_entry_header(name, b"\x0a", len(value)) + value


@functools.lru_cache(maxsize=1 << 12)
def _label_and_patient(label: int, patient_id: str) -> bytes:
    return _int64_entry("label", label) + _bytes_entry("patient_id", patient_id.encode())


@functools.lru_cache(maxsize=1 << 8)
def _height_and_width(height: int, width: int) -> bytes:
    return _int64_entry("height", height) + _int64_entry("width", width)


def _example_tail(label: int, patient_id: str, x: int, y: int, height: int, width: int) -> bytes:
    """The map entries after the image's, in FEATURES order, from small caches (the pairs that
    repeat within a patient cached together: 4 lookups a record instead of 6)."""
    return b"".join((_label_and_patient(label, patient_id), _int64_entry("x", x),
                     _int64_entry("y", y), _height_and_width(height, width)))


def _example_head(image_length: int, tail_length: int) -> bytes:
    """The Example's bytes before the image: its one field's header and the image entry's."""
    head = _map_entry_header("image", b"\x0a", image_length)
    return b"\x0a" + _varint(len(head) + image_length + tail_length) + head  # Example.features = 1


def encode_example(image: bytes, label: int, patient_id: str, x: int, y: int,
                   height: int, width: int) -> bytes:
    """Serializes one patch as a `tf.train.Example`, byte for byte as TensorFlow would parse it.

    Map entries are written in FEATURES order; all but the image's come from small caches, so a
    record costs one copy of the image and a few lookups (the converter writes 277k of them).
    """
    tail = _example_tail(label, patient_id, x, y, height, width)
    return b"".join((_example_head(len(image), len(tail)), image, tail))


# --- TFRecord framing ----------------------------------------------------------------------

_UINT64 = struct.Struct("<Q")
_UINT32 = struct.Struct("<I")


def _mask(crc: int) -> bytes:
    return _UINT32.pack((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _masked_crc(data: bytes) -> bytes:
    return _mask(google_crc32c.value(data))


def frame_record(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked CRC32C of length, data, masked CRC32C of data."""
    length = _UINT64.pack(len(data))
    return b"".join((length, _masked_crc(length), data, _masked_crc(data)))


@functools.lru_cache(maxsize=1 << 12)  # raw images: one image length, a few tail lengths
def _record_prefix(image_length: int, tail_length: int) -> tuple[bytes, int]:
    """A framed record's bytes before its image (length, length CRC, Example head), and the
    CRC32C of the Example head, which the data's CRC extends over the image and the tail."""
    head = _example_head(image_length, tail_length)
    length = _UINT64.pack(len(head) + image_length + tail_length)
    return length + _masked_crc(length) + head, google_crc32c.value(head)


def write_example(write, image: bytes, label: int, patient_id: str, x: int, y: int,
                  height: int, width: int) -> None:
    """frame_record(encode_example(...)) passed to `write` in three pieces: no copy of the image
    into a record, a cached prefix, and the CRC extended over the image where it lies (what the
    converter does 277k times; the same bytes, tested)."""
    tail = _example_tail(label, patient_id, x, y, height, width)
    prefix, head_crc = _record_prefix(len(image), len(tail))
    crc = google_crc32c.extend(google_crc32c.extend(head_crc, image), tail)
    write(prefix)
    write(image)
    write(tail + _mask(crc))
