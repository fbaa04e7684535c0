"""Plain TensorFlow versions of what the package computes in fused ops, as the tests'
references."""

import tensorflow as tf

from alexnet_tf import preprocessing


def pca_lighting(image, eigenvalues, eigenvectors, stddev, seed,
                 scale=preprocessing.LIGHTING_SQRT_EIGENVALUE):
    """Section 4.1: one random multiple of the RGB principal components added to every
    pixel of an [H, W, 3] image in 0..255 units; float32. The same seed draws the same
    a_i."""
    rgb = preprocessing.pca_lighting_rgb(eigenvalues, eigenvectors, stddev, seed, scale)
    return tf.cast(image, tf.float32) + rgb


def resize_flip_and_normalize(region, size, mean_image, mean_offset, flip, rgb):
    """`ops.resize_flip_and_normalize` as standard TensorFlow ops, one pass each."""
    resized = tf.image.resize(tf.cast(region, tf.float32), [size, size])
    mean_offset = tf.cast(mean_offset, tf.int32)
    mean = tf.slice(tf.cast(mean_image, tf.float32), [mean_offset[0], mean_offset[1], 0],
                    [size, size, 3])
    crop = resized - mean
    crop = tf.cond(tf.convert_to_tensor(flip, tf.bool), lambda: tf.reverse(crop, [1]),
                   lambda: crop)
    return crop + tf.reshape(tf.cast(rgb, tf.float32), [1, 1, 3])
