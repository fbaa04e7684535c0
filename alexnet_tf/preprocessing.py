"""The paper's preprocessing and augmentation (Sections 2 and 4.1) as pure TensorFlow functions.

Every function here works on one image, takes its sizes and seeds as arguments and
reads no global state, so it behaves the same eagerly and inside `tf.data.Dataset.map`.
Random functions take a stateless seed (an int tensor of shape [2]) and return the
same result for the same seed.

Geometry. "Rescale the shorter side to 256 and keep the central 256x256 patch" is
done as: take the central square of side min(H, W), resize it to 256x256 (bilinear,
half-pixel centres, no antialiasing). This is the paper's rescale-then-crop without
the rounding of the longer side to an integer, and it lets JPEGs be decoded only
inside that square.

A crop of that rescale is taken from the part of the image it covers: the region is
cut out (for a JPEG, only it is decoded) and resized straight to the crop's size.
That is the same crop as the literal steps (`resize_shorter_and_center_crop`, then
`random_crop_and_flip` or `center_crop`) up to a sub-pixel shift of the bilinear
sampling grid, with a fifth less decoding and a quarter fewer resized pixels. For
training, a JPEG's window decode, resize, mirror, mean subtraction and lighting are
one compiled op (`training_crop_from_bytes`; other formats are decoded whole, then
one op does the rest in one pass), and the image's random choices are another
(`ops.augmentation_draws`). Evaluation has one function per input kind
(`eval_crops_from_bytes`, `eval_crops_from_pixels`) that training's validation, the
evaluation tools and the SavedModel all call.
"""

import tensorflow as tf

from alexnet_tf import ops

from alexnet_tf.settings import (  # noqa: F401
    PAPER_IMAGE_SIZE, PAPER_CROP_SIZE, PAPER_LIGHTING_STDDEV, PAPER_NUM_TEST_CROPS,
    LIGHTING_SQRT_EIGENVALUE, LIGHTING_EIGENVALUE, LIGHTING_NONE, LIGHTING_SCALES,
)

# libjpeg's fast integer IDCT: faster than the accurate one, with errors of a few grey
# levels, well below the lighting noise.
DEFAULT_DCT_METHOD = "INTEGER_FAST"
# Evaluation, in training and in the SavedModel alike, decodes with libjpeg's accurate
# IDCT (also tf.io.decode_image's): what is measured is what a served model computes.
EVAL_DCT_METHOD = "INTEGER_ACCURATE"

_MAX_PIXEL = 255.0

# ----------------------------------------------------------------------------------
# Decoding.


def decode_image(image_bytes, dct_method=DEFAULT_DCT_METHOD):
    """Decodes any JPEG, PNG, GIF, BMP or WebP into uint8 RGB [H, W, 3].

    The format is read from the bytes, not the file name (ILSVRC-2012 has a PNG named
    .JPEG). Grey-scale images are replicated to three channels, CMYK JPEGs are
    converted to RGB by libjpeg, an alpha channel is dropped and 16-bit PNGs are scaled
    to 8 bits, so every source yields the same kind of image.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method=dct_method),
        lambda: tf.io.decode_image(
            image_bytes, channels=3, dtype=tf.uint8, expand_animations=False
        ),
    )
    image.set_shape([None, None, 3])
    return image


# The bytes of an image's header that encoded_image_size reads.
_HEADER_BYTES = 32


def _header(image_bytes):
    """The first _HEADER_BYTES bytes as int64 [32], zeros past the end of short data."""
    head = tf.strings.substr(image_bytes, 0, _HEADER_BYTES)
    padded = tf.strings.substr(tf.strings.join([head, b"\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)


def _unsigned(header, start, length, big_endian=False):
    """The unsigned integer in header[start:start + length]."""
    value = tf.constant(0, tf.int64)
    for k in range(length):
        byte = header[start + k] if big_endian else header[start + length - 1 - k]
        value = value * 256 + byte
    return value


def _starts_with(header, prefix, at=0):
    return tf.reduce_all(tf.equal(header[at:at + len(prefix)], list(prefix)))


def _non_jpeg_size(header):
    """(height, width) from a PNG, GIF, BMP or WebP header; (0, 0) for anything else.

    PNG: IHDR's big-endian width and height; GIF: the logical screen's; BMP: the
    DIB header's (16 bits in the old core header, else 32 bits, a negative height
    meaning top-down); WebP: the VP8 frame's 14-bit sizes, VP8L's packed 14-bit sizes
    minus one, or VP8X's 24-bit canvas sizes minus one.
    """
    def signed32(value):
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    vp8 = (_unsigned(header, 28, 2) % 2**14, _unsigned(header, 26, 2) % 2**14)
    vp8l_bits = _unsigned(header, 21, 4)
    vp8l = ((vp8l_bits // 2**14) % 2**14 + 1, vp8l_bits % 2**14 + 1)
    vp8x = (_unsigned(header, 27, 3) + 1, _unsigned(header, 24, 3) + 1)
    core_bmp = tf.equal(_unsigned(header, 14, 4), 12)
    bmp = (tf.where(core_bmp, _unsigned(header, 20, 2), signed32(_unsigned(header, 22, 4))),
           tf.where(core_bmp, _unsigned(header, 18, 2), signed32(_unsigned(header, 18, 4))))
    webp = _starts_with(header, b"RIFF") & _starts_with(header, b"WEBP", 8)
    cases = [
        (_starts_with(header, b"\x89PNG"),
         (_unsigned(header, 20, 4, big_endian=True), _unsigned(header, 16, 4, big_endian=True))),
        (_starts_with(header, b"GIF8"), (_unsigned(header, 8, 2), _unsigned(header, 6, 2))),
        (_starts_with(header, b"BM"), bmp),
        (webp & _starts_with(header, b"VP8 ", 12), vp8),
        (webp & _starts_with(header, b"VP8L", 12), vp8l),
        (webp & _starts_with(header, b"VP8X", 12), vp8x),
    ]
    height, width = tf.constant(0, tf.int64), tf.constant(0, tf.int64)
    for condition, (h, w) in reversed(cases):
        height, width = tf.where(condition, h, height), tf.where(condition, w, width)
    return height, width


def encoded_image_size(image_bytes):
    """(height, width) int64 of an encoded image, read from its header alone: no pixel
    is decoded, so a decompression bomb (a few KB that decode to gigabytes) costs
    nothing to measure. (0, 0) for data of no known format; a JPEG whose header does
    not parse fails as its decode would."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0], shape[1]

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, lambda: _non_jpeg_size(_header(image_bytes)))


def _source_window(height, width, image_size, crop_size, offset_y, offset_x):
    """The [y, x, h, w] region of an HxW image that the crop of its rescale covers.

    The crop is [offset, offset + crop_size) in the image_size x image_size rescale of
    the central square; integer rounding to the nearest source pixel.
    """
    side = tf.minimum(height, width)
    size = tf.cast(image_size, tf.int32)
    window = tf.maximum((2 * crop_size * side + size) // (2 * size), 1)
    window = tf.minimum(window, side)
    y = tf.minimum((2 * tf.cast(offset_y, tf.int32) * side + size) // (2 * size), side - window)
    x = tf.minimum((2 * tf.cast(offset_x, tf.int32) * side + size) // (2 * size), side - window)
    return tf.stack([(height - side) // 2 + y, (width - side) // 2 + x, window, window])


def _resize_square(image, size):
    """float32 [size, size, 3] bilinear resize of a square image; a cast if already there."""
    return tf.cond(
        tf.equal(tf.shape(image)[0], size),
        lambda: tf.cast(image, tf.float32),
        # TF's resize kernel is faster on float input than on uint8.
        lambda: tf.image.resize(tf.cast(image, tf.float32), [size, size]),
    )


def decode_crop_region(
    image_bytes, image_size, crop_size, offset_y, offset_x, dct_method=DEFAULT_DCT_METHOD
):
    """The uint8 [h, w, 3] part of an encoded image that a crop of its rescale covers.

    The crop is the one at (offset_y, offset_x) of the image_size-square rescale of the
    central square; resized to crop_size it is `decode_crop_and_resize`. For a JPEG
    only this region is decoded (`tf.io.decode_and_crop_jpeg`); other formats are
    decoded whole and sliced.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        window = _source_window(shape[0], shape[1], image_size, crop_size, offset_y, offset_x)
        return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method=dct_method)

    def other():
        return crop_region_of_pixels(decode_image(image_bytes, dct_method), image_size,
                                     crop_size, offset_y, offset_x)

    region = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    region.set_shape([None, None, 3])
    return region


def crop_region_of_pixels(image, image_size, crop_size, offset_y, offset_x):
    """The uint8 [h, w, 3] region of a decoded [H, W, C] image that the crop at
    (offset_y, offset_x) of its image_size-square rescale covers (`decode_crop_region`
    without the decoding)."""
    image = to_rgb(tf.convert_to_tensor(image))
    shape = tf.shape(image)
    window = _source_window(shape[0], shape[1], image_size, crop_size, offset_y, offset_x)
    return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])


def decode_crop_and_resize(
    image_bytes, image_size, crop_size, offset_y, offset_x, dct_method=DEFAULT_DCT_METHOD
):
    """The crop at (offset_y, offset_x) of the image_size-square rescale, from encoded bytes.

    Returns float32 [crop_size, crop_size, 3] in 0..255: `decode_crop_region` resized
    to crop_size. With crop_size == image_size and zero offsets this is the whole
    central square rescaled, i.e.
    `resize_shorter_and_center_crop(decode_image(image_bytes), image_size)`.
    """
    region = decode_crop_region(image_bytes, image_size, crop_size, offset_y, offset_x,
                                dct_method)
    image = _resize_square(region, crop_size)
    image.set_shape([crop_size, crop_size, 3])
    return image


# ----------------------------------------------------------------------------------
# The paper's steps on decoded images.


def to_rgb(image):
    """[H, W, 3] from a grey [H, W, 1], RGB [H, W, 3] or RGBA [H, W, 4] image (alpha dropped)."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    image = tf.cond(
        tf.equal(tf.shape(image)[-1], 1),
        lambda: tf.tile(image, [1, 1, 3]),
        lambda: image[..., :3],
    )
    image.set_shape(image.shape[:-1].concatenate([3]))
    return image


def resize_shorter_and_center_crop(image, size):
    """Section 2: the central square, rescaled to size x size (float32, 0..255).

    Equivalent to rescaling the shorter side to `size` and keeping the central
    size x size patch. Bilinear with half-pixel centres and no antialiasing: ImageNet
    images shrink by about 1.5x, where antialiasing changes little and costs 5x.
    """
    image = to_rgb(tf.convert_to_tensor(image))
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    square = tf.slice(image, [(shape[0] - side) // 2, (shape[1] - side) // 2, 0], [side, side, 3])
    resized = _resize_square(square, size)
    resized.set_shape([size, size, 3])
    return resized


def subtract_mean(image, mean_image):
    """Section 2: subtracts the training set's per-pixel mean image (not a per-channel mean)."""
    return tf.cast(image, tf.float32) - tf.cast(mean_image, tf.float32)


def random_crop_window(height, width, crop_size, seed):
    """(offset_y, offset_x, flip) of a uniformly random crop_size crop and a fair coin.

    One stateless draw of three uniforms, so the same seed gives the same window in
    every pipeline that uses it.
    """
    uniforms = tf.random.stateless_uniform([3], seed, dtype=tf.float32)
    spans = tf.cast(tf.stack([height, width]) - crop_size + 1, tf.float32)
    offsets = tf.cast(tf.floor(uniforms[:2] * spans), tf.int32)
    offsets = tf.minimum(offsets, tf.cast(spans, tf.int32) - 1)
    return offsets[0], offsets[1], uniforms[2] < 0.5


def flip_left_right_if(image, flip):
    """The horizontal mirror of [H, W, C] `image` where `flip` is true, else the image."""
    return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: tf.identity(image))


def random_crop_and_flip(image, crop_size, seed):
    """Section 4.1: a random crop_size x crop_size patch, mirrored with probability 1/2."""
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    offset_y, offset_x, flip = random_crop_window(shape[0], shape[1], crop_size, seed)
    crop = tf.slice(image, [offset_y, offset_x, 0], [crop_size, crop_size, -1])
    crop = flip_left_right_if(crop, flip)
    crop.set_shape([crop_size, crop_size, image.shape[-1]])
    return crop


def center_crop(image, crop_size):
    """The central crop_size x crop_size patch of [..., H, W, C]: one image or a batch.

    Offsets (H - crop) // 2 and (W - crop) // 2.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    top, left = (shape[-3] - crop_size) // 2, (shape[-2] - crop_size) // 2
    crop = image[..., top : top + crop_size, left : left + crop_size, :]
    crop.set_shape(image.shape[:-3].concatenate([crop_size, crop_size, image.shape[-1]]))
    return crop


def ten_crop(image, crop_size):
    """Section 4.1 test time: [10, crop, crop, C] patches for averaging the softmax.

    Order: top-left, top-right, bottom-left, bottom-right, centre, then the horizontal
    mirrors of those five in the same order.
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    bottom, right = shape[0] - crop_size, shape[1] - crop_size
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    crops = tf.stack([tf.slice(image, [y, x, 0], [crop_size, crop_size, -1]) for y, x in corners])
    crops = tf.concat([crops, tf.reverse(crops, [2])], axis=0)
    crops.set_shape([PAPER_NUM_TEST_CROPS, crop_size, crop_size, image.shape[-1]])
    return crops


# `make_eval_dataset`'s `ten_crop` flag shadows the function there.
_ten_crop = ten_crop


def lighting_magnitudes(eigenvalues, scale=LIGHTING_SQRT_EIGENVALUE):
    """Per-component multipliers of a_i, in 0..255 pixel units (see LIGHTING_SCALES)."""
    eigenvalues = tf.cast(eigenvalues, tf.float32)
    if scale == LIGHTING_SQRT_EIGENVALUE:
        return tf.sqrt(tf.maximum(eigenvalues, 0.0))
    if scale == LIGHTING_EIGENVALUE:
        # l_i / 255^2 is the eigenvalue for [0, 1] pixels; times 255 back to 0..255 units.
        return eigenvalues / _MAX_PIXEL
    raise ValueError(f"Unknown lighting scale {scale!r}; expected one of {LIGHTING_SCALES[:2]}.")


def lighting_basis(eigenvalues, eigenvectors, scale=LIGHTING_SQRT_EIGENVALUE):
    """[3, 3] float32 with row i = m_i p_i^T: the lighting offset is [a1 a2 a3] @ basis.

    `eigenvectors` holds the principal components p_i as columns, matching
    `eigenvalues`; m_i comes from `lighting_magnitudes`.
    """
    magnitudes = lighting_magnitudes(eigenvalues, scale)
    return tf.transpose(tf.cast(eigenvectors, tf.float32) * magnitudes[tf.newaxis, :])


def _lighting_rgb(basis, stddev, seed):
    alphas = tf.random.stateless_normal([1, 3], seed, stddev=stddev, dtype=tf.float32)
    return tf.matmul(alphas, basis)[0]


def pca_lighting_rgb(eigenvalues, eigenvectors, stddev, seed, scale=LIGHTING_SQRT_EIGENVALUE):
    """Section 4.1: the RGB offset [p1 p2 p3] [a1 m1, a2 m2, a3 m3]^T, a_i ~ N(0, stddev)."""
    return _lighting_rgb(lighting_basis(eigenvalues, eigenvectors, scale), stddev, seed)


def augmentation_seeds(seed, index):
    """(crop seed, lighting seed) for the index-th image drawn from a stream seeded by seed.

    Stateless seeds address Philox counters, so [seed, 2i] and [seed, 2i + 1] give
    independent draws; integer arithmetic keeps this off the per-image cost.
    """
    crop_seed = tf.stack([tf.constant(seed, tf.int64), 2 * tf.cast(index, tf.int64)])
    return crop_seed, crop_seed + tf.constant([0, 1], tf.int64)


def training_crop_from_bytes(image_bytes, crop_size, mean_image, offset, flip, rgb,
                             dct_method=DEFAULT_DCT_METHOD):
    """A training crop from an encoded image: float32 [crop_size, crop_size, 3].

    The crop at `offset` (y, x) of the S x S rescale of the image's central square
    (S the side of the square `mean_image`), minus the mean image's crop there,
    mirrored if `flip`, plus `rgb`. A JPEG goes through one op that decodes only
    the crop's window; other formats are decoded whole and sliced first.
    """
    image_size = mean_image.shape[0]

    def jpeg():
        return ops.decode_jpeg_crop_flip_and_normalize(
            image_bytes, crop_size, mean_image, offset, flip, rgb, dct_method
        )

    def other():
        region = decode_crop_region(
            image_bytes, image_size, crop_size, offset[0], offset[1], dct_method
        )
        return ops.resize_flip_and_normalize(region, crop_size, mean_image, offset, flip, rgb)

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


# ----------------------------------------------------------------------------------
# Evaluation: one function per kind of input, for every route that evaluates.


def eval_crops_from_pixels(image, mean_image, crop_size, ten_crop=False):
    """The evaluation input of a decoded [H, W, C] image, mean-subtracted float32:
    the centre crop [crop_size, crop_size, 3], or with `ten_crop` the ten crops
    [10, crop_size, crop_size, 3] of Section 4.1.

    The centre crop is taken from the region of the image it covers, resized once,
    as training's crops are; the ten crops from the whole rescale. mean_image is the
    square [S, S, 3] mean of the dataset, S the rescale's side.
    """
    image_size = mean_image.shape[0]
    mean_image = tf.cast(mean_image, tf.float32)
    if ten_crop:
        rescaled = resize_shorter_and_center_crop(image, image_size)
        return _ten_crop(subtract_mean(rescaled, mean_image), crop_size)
    center = (image_size - crop_size) // 2
    region = crop_region_of_pixels(image, image_size, crop_size, center, center)
    crop = _resize_square(region, crop_size)
    crop.set_shape([crop_size, crop_size, 3])
    return subtract_mean(crop, center_crop(mean_image, crop_size))


def eval_crops_from_bytes(image_bytes, mean_image, crop_size, ten_crop=False,
                          dct_method=EVAL_DCT_METHOD):
    """`eval_crops_from_pixels` of an encoded image: a JPEG's centre crop decodes only
    the region it covers; any other format is decoded whole first."""
    image_size = mean_image.shape[0]
    mean_image = tf.cast(mean_image, tf.float32)
    if ten_crop:
        rescaled = decode_crop_and_resize(image_bytes, image_size, image_size, 0, 0, dct_method)
        return _ten_crop(subtract_mean(rescaled, mean_image), crop_size)
    center = (image_size - crop_size) // 2
    crop = decode_crop_and_resize(image_bytes, image_size, crop_size, center, center,
                                  dct_method)
    return subtract_mean(crop, center_crop(mean_image, crop_size))
