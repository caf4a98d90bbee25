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

import struct

import google_crc32c

PATCH_SIZE = 50
CHANNELS = 3
IMAGE_SHAPE = (PATCH_SIZE, PATCH_SIZE, CHANNELS)
IMAGE_BYTES = PATCH_SIZE * PATCH_SIZE * CHANNELS

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

def _varint(value: int) -> bytes:
    if value < 0:  # int64 negatives are ten-byte two's complement varints
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _feature(kind: str, value) -> bytes:
    # Feature { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
    #                        Int64List int64_list = 3; } }, each list a `repeated value = 1`.
    if kind == "bytes":
        return _field(1, _field(1, value))
    return _field(3, _field(1, _varint(value)))  # packed repeated int64 with one element


def encode_example(image: bytes, label: int, patient_id: str, x: int, y: int,
                   height: int, width: int) -> bytes:
    """Serializes one patch as a `tf.train.Example` (bytes identical in meaning to TF's)."""
    values = {"image": image, "label": label, "patient_id": patient_id.encode(),
              "x": x, "y": y, "height": height, "width": width}
    # Features { map<string, Feature> feature = 1; }: each map entry is {key = 1, value = 2}.
    entries = b"".join(
        _field(1, _field(1, name.encode()) + _field(2, _feature(kind, values[name])))
        for name, kind in FEATURES.items())
    return _field(1, entries)  # Example { Features features = 1; }


# --- TFRecord framing ----------------------------------------------------------------------

def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return struct.pack("<I", masked)


def frame_record(data: bytes) -> bytes:
    """One TFRecord: uint64 length, masked CRC32C of length, data, masked CRC32C of data."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)
