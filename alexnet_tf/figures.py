"""Figure 3: a network's conv1 kernels as one image, each tower's kernels in a block.

Every kernel is contrast-stretched on its own, its smallest weight to 0 and its largest
to 255 in every channel together, so that its colours keep their balance. Tower 0's
kernels (the paper's GPU 1, Figure 3's top half) come first, each tower's block below
the one before, apart by a wider gap. `alexnet_tf.show_filters` writes it as a PNG;
training logs it to TensorBoard.
"""

import math

import numpy as np

SPACING = 1  # background pixels around and between kernels, before zooming
TOWER_GAP = 4  # background rows between two towers' blocks, before zooming
BACKGROUND = 255
DISPLAY_SIDE = 48  # the default zoom makes a kernel about this many pixels wide


def stretch(kernel):
    """uint8 [k, k, 3]: one kernel's weights mapped linearly onto 0..255."""
    kernel = np.asarray(kernel, np.float64)
    low, high = kernel.min(), kernel.max()
    scaled = (kernel - low) / (high - low) if high > low else np.zeros_like(kernel)
    return np.round(scaled * 255).astype(np.uint8)


def tile_origin(index, columns, side):
    """(y, x) of the index-th kernel in its tower's block, before zooming."""
    row, column = divmod(index, columns)
    return SPACING + row * (side + SPACING), SPACING + column * (side + SPACING)


def filter_figure(tower_kernels, columns=None, zoom=None):
    """uint8 [H, W, 3]: the kernels of each tower ([k, k, 3, filters] arrays, tower 0
    first) stretched and laid out in rows of `columns` (default: a tower per row), each
    pixel enlarged to zoom x zoom (default: about DISPLAY_SIDE pixels a kernel)."""
    side = tower_kernels[0].shape[0]
    columns = columns or max(k.shape[-1] for k in tower_kernels)
    zoom = zoom or max(1, DISPLAY_SIDE // side)
    width = SPACING + columns * (side + SPACING)
    blocks = []
    for kernels in tower_kernels:
        count = kernels.shape[-1]
        block = np.full((SPACING + math.ceil(count / columns) * (side + SPACING), width, 3),
                        BACKGROUND, np.uint8)
        for index in range(count):
            y, x = tile_origin(index, columns, side)
            block[y:y + side, x:x + side] = stretch(kernels[..., index])
        blocks.extend([block, np.full((TOWER_GAP, width, 3), BACKGROUND, np.uint8)])
    figure = np.concatenate(blocks[:-1])
    return figure.repeat(zoom, axis=0).repeat(zoom, axis=1)
