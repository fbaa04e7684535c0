"""Generated image files for the data tests: class folders and ILSVRC-2012-layout tars.

Images are smooth random fields (so JPEG keeps them close to their pixels) written with
TensorFlow's own encoders, plus the awkward files real data sets contain: grey-scale,
CMYK and alpha images, a PNG named .JPEG, truncated and garbage files.
"""

import base64
import io
import os
import tarfile

import numpy as np
import tensorflow as tf

# ILSVRC2012_val_00000001.JPEG .. _00000004.JPEG: TFDS's bundled validation_labels.txt
# lists the labels of the validation files in sorted name order, so these are the
# synsets of the first four files.
VALIDATION_SYNSETS = ("n01751748", "n09193705", "n02105855", "n04263257")

# A 16x16 Adobe CMYK JPEG (inverted CMYK, as Photoshop writes it), written by Pillow from
# the RGB quadrants below: top-left, top-right, bottom-left, bottom-right.
CMYK_JPEG = base64.b64decode(
    "/9j/7gAOQWRvYmUAZAAAAAAA/9sAQwACAQEBAQECAQEBAgICAgIEAwICAgIFBAQDBAYFBgYGBQYGBgcJCAYH"
    "CQcGBggLCAkKCgoKCgYICwwLCgwJCgoK/8AAFAgAEAAQBEMRAE0RAFkRAEsRAP/EAB8AAAEFAQEBAQEBAAAA"
    "AAAAAAABAgMEBQYHCAkKC//EALUQAAIBAwMCBAMFBQQEAAABfQECAwAEEQUSITFBBhNRYQcicRQygZGhCCNC"
    "scEVUtHwJDNicoIJChYXGBkaJSYnKCkqNDU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6"
    "g4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2drh4uPk5ebn6Onq"
    "8fLz9PX29/j5+v/aAA4EQwBNAFkASwAAPwD9IK/Hevx3r9/K/lXr+qiiiiv5V6/qoor+viv6+K/l/or/2Q=="
)
CMYK_JPEG_QUADRANTS_RGB = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40))


def smooth_image(seed, height, width, channels=3):
    """uint8 [height, width, channels]: bilinear upsampling of a coarse random grid."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 225, size=(4, 4, channels)).astype(np.float32)
    image = tf.image.resize(coarse[None], [height, width], method="bilinear")[0]
    return np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)


def jpeg_bytes(image, quality=95):
    """JPEG without chroma subsampling, so that decoded pixels stay within a few levels."""
    return tf.io.encode_jpeg(image, quality=quality, chroma_downsampling=False).numpy()


def png_bytes(image):
    return tf.io.encode_png(image).numpy()


def truncated_jpeg(seed):
    """The first half of a valid JPEG: what an interrupted copy leaves."""
    data = jpeg_bytes(smooth_image(seed, 32, 40))
    return data[: len(data) // 2]


GARBAGE = b"this is not an image" * 10


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _add_to_tar(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_ilsvrc_tars(manual_dir, train_files, validation_files):
    """ILSVRC2012_img_train.tar (one inner <synset>.tar per class) and ILSVRC2012_img_val.tar.

    train_files: {synset: {file name: bytes}}; validation_files: {file name: bytes}.
    """
    os.makedirs(manual_dir, exist_ok=True)
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train:
        for synset, files in train_files.items():
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as synset_tar:
                for name, data in files.items():
                    _add_to_tar(synset_tar, name, data)
            _add_to_tar(train, f"{synset}.tar", inner.getvalue())
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as validation:
        for name, data in validation_files.items():
            _add_to_tar(validation, name, data)
