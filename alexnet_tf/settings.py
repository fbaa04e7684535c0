"""The paper's constants and the names of the configuration's choices, each written
once, here, with the section it comes from.

This module imports nothing, so that the flag schema (`config`) and every command's
`--help` load without TensorFlow; the modules that use a value (model, ops, optim,
preprocessing, distribute) import it from here and keep it under the same name.
"""

# ----------------------------------------------------------------------------------
# The network (model.py).

# Section 3.2: half of the kernels (or neurons) on each of two GPUs.
PAPER_TOWERS = 2

# Section 3.4: overlapping pooling, z = 3 and s = 2; the ablation is z = s = 2.
PAPER_POOL_SIZE = 3
PAPER_POOL_STRIDE = 2
NON_OVERLAPPING_POOL_SIZE = 2

# Section 4.2: dropout with probability 0.5 in the first two fully connected layers.
PAPER_DROPOUT_RATE = 0.5

# The network's sizes (model.SIZES): the paper's, and the same topology for ~32x32 images.
MODEL_SIZES = ("paper", "small")

ACTIVATIONS = ("relu", "tanh")

# "paper": every weight from N(0, 0.01) (Section 5). "scaled": each layer's standard
# deviation is 0.01 * sqrt(paper fan-in / fan-in), so that it scales its input by the
# same factor as the paper's layer does; for the paper's net the two are the same.
# A narrower net needs it: with N(0, 0.01) the small variant's layers shrink the
# signal 2-4 times more each than the paper's do, its logits hardly depend on the
# image, and on Fashion-MNIST (0-255 pixels less the mean, the paper's SGD at 0.01)
# it stays at chance for 150 steps, where "scaled" reaches 74% test accuracy.
# "lecun": N(0, 1 / fan-in), the tanh network's default (see model.TANH_INPUT_SCALE).
WEIGHT_INITS = ("paper", "scaled", "lecun")

# Keras' dtype policies, and what --mixed_precision's names mean to the model builder:
# variables stay float32 in every policy, the layers compute in the named type.
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
MIXED_PRECISION_POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16",
                            "float16": "mixed_float16"}

# How conv1 treats the border of the crop. A 224 crop gives the paper's 55x55 only
# if the last 11x11 window hangs over the bottom and right edge: cuda-convnet2 does
# this (zeros beyond the edge, 3 pixels here), so it is the default. Caffe instead
# takes a 227 crop with no padding ("valid"). The small variant keeps its input size.
CONV1_PADDINGS = ("overhang", "valid", "same")

# How many outputs a pooling layer has along a side of `size`: "floor", (size - z) //
# s + 1, as Keras' "valid" pooling; "ceil", ceil((size - z) / s) + 1, as cuda-convnet
# and Caffe, whose last window may hang over the edge (it sees only what is inside).
# The two agree on every side of the paper's net (55 -> 27 -> 13 -> 6).
POOLING_RULES = ("floor", "ceil")

# ----------------------------------------------------------------------------------
# Local response normalization (ops.py).

# Section 3.3: "k = 2, n = 5, alpha = 10^-4, and beta = 0.75".
PAPER_LRN_DEPTH_RADIUS = 2  # n = 5 channels: i - 2 .. i + 2
PAPER_LRN_BIAS = 2.0
PAPER_LRN_ALPHA = 1e-4
PAPER_LRN_BETA = 0.75
# The smallest bias the compiled op takes: twice float32's smallest normal value (its
# vector estimate of n^-1/2 halves n, which must stay normal: TensorFlow's threads
# flush subnormal numbers to zero).
MIN_LRN_BIAS = 2.350988701644575e-38

# How alpha weighs the window's sum of squares. The paper's text writes
# k + alpha * sum(a^2) (as does tf.nn.local_response_normalization): "paper_text",
# the default. The authors' code, cuda-convnet, divides the configured scale by the
# window size for cross-map normalization (its layer parser: `scale /= size`), and so
# do Caffe and PyTorch: k + (alpha / n) * sum(a^2), "authors_code". The network the
# paper reports was trained with the latter, an effective 2e-5 per term.
LRN_PAPER_TEXT = "paper_text"
LRN_AUTHORS_CODE = "authors_code"
LRN_ALPHA_CONVENTIONS = (LRN_PAPER_TEXT, LRN_AUTHORS_CODE)


# ----------------------------------------------------------------------------------
# The update and the schedule (optim.py).

# Section 5: "batch size of 128 examples, momentum of 0.9, and weight decay of 0.0005".
PAPER_MOMENTUM = 0.9
PAPER_WEIGHT_DECAY = 0.0005
# "The learning rate was initialized at 0.01 ... divide the learning rate by 10 when
# the validation error rate stopped improving ... reduced three times prior to termination."
PAPER_LEARNING_RATE = 0.01
PAPER_LR_FACTOR = 0.1
PAPER_LR_REDUCTIONS = 3

# Dynamic loss scaling for float16 (`DynamicLossScale`), with the defaults of
# keras.optimizers.LossScaleOptimizer: start at 2^15, divide by 2 on an overflow,
# multiply by 2 after 2000 finite steps in a row.
LOSS_SCALE_INITIAL = 2.0**15
LOSS_SCALE_GROWTH_STEPS = 2000
LOSS_SCALE_FACTOR = 2.0
LOSS_SCALE_MIN = 1.0


# The learning-rate schedules: "plateau" divides by 10 after `patience` evaluations
# without a drop of at least `min_delta` in the validation top-1 error (the paper's
# "when the validation error rate stopped improving"); "step" at fixed epochs.
PLATEAU_PATIENCE = 3
PLATEAU_MIN_DELTA = 0.001
STEP_BOUNDARIES = (30, 60, 80)


# ----------------------------------------------------------------------------------
# The data (data.py).

IMAGENET2012 = "imagenet2012"
IMAGE_FOLDER = "image_folder"
# A tiny generated image folder, written where the data is expected if it is not there.
SYNTHETIC = "synthetic"
DATASETS = (IMAGENET2012, IMAGE_FOLDER, SYNTHETIC)
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)


# ----------------------------------------------------------------------------------
# Preprocessing and augmentation (preprocessing.py).

# Section 2: "rescaled the image such that the shorter side was of length 256, and then
# cropped out the central 256x256 patch".
PAPER_IMAGE_SIZE = 256
# Section 4.1: "extracting random 224x224 patches (and their horizontal reflections)".
PAPER_CROP_SIZE = 224
# Section 4.1: "a_i is a Gaussian random variable with mean zero and standard deviation 0.1".
PAPER_LIGHTING_STDDEV = 0.1
# Section 4.1 (test time): "five 224x224 patches (the four corner patches and the center
# patch) as well as their horizontal reflections (hence ten patches in all)".
PAPER_NUM_TEST_CROPS = 10

# How a principal component's eigenvalue l_i scales the lighting noise a_i (Section 4.1
# writes a_i * l_i and leaves the pixel scale unsaid). Eigenvalues are always those of
# the covariance of 0..255 RGB values, as `dataset_stats` stores them.
#
# "sqrt_eigenvalue" (the default) follows the authors' code, cuda-convnet2: the noise
# along component i is a_i * sqrt(l_i), i.e. a_i times the component's standard
# deviation, in 0..255 pixel units (about 121.8, 37.1 and 19.7 on ImageNet). This is
# what produced the paper's numbers.
LIGHTING_SQRT_EIGENVALUE = "sqrt_eigenvalue"
# "eigenvalue" reads the paper's text literally with pixels scaled to [0, 1], as many
# re-implementations do (ImageNet eigenvalues about 0.2175, 0.0188, 0.0045): a_i * l_i
# in [0, 1] units, which is a_i * l_i / 255 in 0..255 units; about half the noise on
# the first component.
LIGHTING_EIGENVALUE = "eigenvalue"
LIGHTING_NONE = "none"
LIGHTING_SCALES = (LIGHTING_SQRT_EIGENVALUE, LIGHTING_EIGENVALUE, LIGHTING_NONE)


# ----------------------------------------------------------------------------------
# Where the network runs (distribute.py).

AUTO = "auto"
ONE_DEVICE = "one_device"
TOWERS = "towers"
MIRRORED = "mirrored"
MULTI_WORKER = "multi_worker"
STRATEGIES = (AUTO, ONE_DEVICE, TOWERS, MIRRORED, MULTI_WORKER)

# The exit status of a command that SIGTERM or Ctrl-C stopped after saving its
# progress: sysexits.h's EX_TEMPFAIL, a temporary failure; rerunning it resumes.
EXIT_INTERRUPTED = 75
