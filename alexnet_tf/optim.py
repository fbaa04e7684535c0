"""The paper's learning rule (Section 5): momentum SGD with weight decay, and its schedule.

    v <- 0.9 v - 0.0005 lr w - lr <dL/dw>_batch
    w <- w + v

written out as the paper states it, not through a Keras optimizer whose update
differs (Keras' SGD folds the learning rate into the velocity differently and
has no decay term on the weights alone). Also the dynamic loss scaling that
float16 training needs around it (`DynamicLossScale`).
"""

import math

import tensorflow as tf

from alexnet_tf.settings import (  # noqa: F401
    PLATEAU_PATIENCE, PLATEAU_MIN_DELTA, STEP_BOUNDARIES,
    PAPER_MOMENTUM, PAPER_WEIGHT_DECAY, PAPER_LEARNING_RATE, PAPER_LR_FACTOR,
    PAPER_LR_REDUCTIONS, LOSS_SCALE_INITIAL, LOSS_SCALE_GROWTH_STEPS, LOSS_SCALE_FACTOR,
    LOSS_SCALE_MIN,
)




def _device_of(variable):
    """The device of a tf.Variable, or of the one behind a Keras variable."""
    return getattr(variable, "device", None) or variable.value.device


def is_bias(variable):
    """Biases are the rank-1 variables: the network has no other (no batch norm)."""
    return len(variable.shape) == 1


class PaperMomentumSGD(tf.Module):
    """Momentum SGD with the paper's update and weight decay.

    Args:
      variables: the trainable variables, in the order gradients will be given.
      momentum, weight_decay: the paper's 0.9 and 0.0005 by default.
      decay_biases: also decay biases. cuda-convnet2, the authors' code, decays
        weights only, which is the default here.
    """

    def __init__(self, variables, momentum=PAPER_MOMENTUM, weight_decay=PAPER_WEIGHT_DECAY,
                 decay_biases=False, name=None):
        super().__init__(name=name)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.decay_biases = bool(decay_biases)
        self._decays = [
            0.0 if (is_bias(v) and not decay_biases) else self.weight_decay for v in variables
        ]
        # Each velocity lives with its weight (a tower's on the tower's device): the
        # update reads and writes them in one kernel.
        self.velocities = []
        for v in variables:
            with tf.name_scope("velocity"), tf.device(_device_of(v)):
                self.velocities.append(
                    tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="velocity"))

    def apply(self, gradients, variables, learning_rate, apply_update=True):
        """One step: v <- m v - d lr w - lr g; w <- w + v, for each variable.

        apply_update: a boolean, or a boolean tensor; False leaves every variable and
          velocity as it is (a loss-scaled step whose gradients overflowed).

        Under a tf.distribute strategy, call it in replica context with the gradients
        already summed over the replicas: each replica then updates its own copy of
        every (mirrored) variable identically, and the weight decay, which is not part
        of the gradient, is applied once whatever the number of replicas.
        """
        if len(gradients) != len(self.velocities):
            raise ValueError(
                f"Got {len(gradients)} gradients for {len(self.velocities)} variables."
            )
        if isinstance(apply_update, bool):
            if apply_update:
                self._update(gradients, variables, learning_rate)
            return
        tf.cond(
            apply_update, lambda: self._update(gradients, variables, learning_rate), lambda: None
        )

    def _update(self, gradients, variables, learning_rate):
        # v <- m v - lr (g + d w) = m v - d lr w - lr g, then w <- w + v: TensorFlow's
        # fused momentum kernel, one pass over each variable and its velocity, where
        # separate ops would read and write the weights several times
        # (tools/bench_train_step.py times both).
        for gradient, variable, velocity, decay in zip(
            gradients, variables, self.velocities, self._decays
        ):
            gradient = tf.cast(gradient, variable.dtype)
            if decay:
                gradient += decay * tf.convert_to_tensor(variable)
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=variable.handle, accum=velocity.handle,
                lr=tf.cast(learning_rate, variable.dtype), grad=gradient,
                momentum=tf.constant(self.momentum, variable.dtype))


def all_finite(tensors):
    """True when no element of any of the tensors is inf or nan."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


class DynamicLossScale(tf.Module):
    """Dynamic loss scaling for float16 training (Micikevicius et al., "Mixed Precision
    Training", ICLR 2018).

    float16 flushes magnitudes below 6e-8 to zero, and a network's gradients can be
    that small (the paper above found many of them so). The loss is multiplied by
    `scale` before the backward pass, which lifts them into range, and the gradients
    (float32, those of float32 variables) are divided by it before the update. A
    scale too large makes some gradient overflow to inf or nan: the step's update is
    then skipped (`PaperMomentumSGD.apply(..., apply_update=False)`) and the scale
    divided by `factor`, down to `min_scale`; after `growth_steps` finite steps in a
    row it is multiplied by `factor`. The defaults are those of
    keras.optimizers.LossScaleOptimizer, which wraps only Keras optimizers.

    The scale and the count of finite steps are variables, so checkpoints carry them.
    Under a tf.distribute strategy, create it in the strategy's scope and call
    `update` in replica context with the same `finite` on every replica (decided on
    gradients already summed over replicas): each replica keeps an identical copy.
    """

    def __init__(self, initial_scale=LOSS_SCALE_INITIAL, growth_steps=LOSS_SCALE_GROWTH_STEPS,
                 factor=LOSS_SCALE_FACTOR, min_scale=LOSS_SCALE_MIN, name=None):
        super().__init__(name=name)
        if not (math.isfinite(initial_scale) and initial_scale >= min_scale > 0):
            raise ValueError(f"initial_scale={initial_scale} must be finite and at least "
                             f"min_scale={min_scale} > 0.")
        if growth_steps < 1 or factor <= 1:
            raise ValueError(f"growth_steps={growth_steps} must be at least 1 and "
                             f"factor={factor} above 1.")
        self.growth_steps = int(growth_steps)
        self.factor = float(factor)
        self.min_scale = float(min_scale)
        self.scale = tf.Variable(float(initial_scale), trainable=False, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def scale_loss(self, loss):
        return loss * tf.cast(self.scale, loss.dtype)

    def unscale(self, gradients):
        """The gradients of the scaled loss divided by the scale."""
        scale = tf.convert_to_tensor(self.scale)
        return [g / tf.cast(scale, g.dtype) for g in gradients]

    def update(self, finite):
        """Records a step whose unscaled gradients were all finite, or not."""
        finite = tf.convert_to_tensor(finite, tf.bool)
        scale = tf.convert_to_tensor(self.scale)
        good_steps = tf.where(finite, self.good_steps + 1, tf.zeros_like(self.good_steps))
        grown = scale * self.factor
        grow = finite & (good_steps >= self.growth_steps) & tf.math.is_finite(grown)
        shrunk = tf.maximum(scale / self.factor, self.min_scale)
        self.scale.assign(tf.where(finite, tf.where(grow, grown, scale), shrunk))
        self.good_steps.assign(tf.where(grow, tf.zeros_like(good_steps), good_steps))


class PlateauSchedule(tf.Module):
    """Divide the learning rate by 10 when the validation error stops improving.

    The paper does this by hand, three times in 90 epochs. Here an evaluation whose
    validation error is not at least `min_delta` below the best so far counts against
    `patience`; after `patience` such evaluations in a row the rate is multiplied by
    `factor`, at most `max_reductions` times. The state lives in variables so that
    checkpoints carry it.
    """

    def __init__(self, initial_learning_rate=PAPER_LEARNING_RATE, patience=PLATEAU_PATIENCE,
                 min_delta=PLATEAU_MIN_DELTA, factor=PAPER_LR_FACTOR,
                 max_reductions=PAPER_LR_REDUCTIONS, name=None):
        super().__init__(name=name)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.factor = float(factor)
        self.max_reductions = int(max_reductions)
        self.learning_rate = tf.Variable(float(initial_learning_rate), trainable=False,
                                         name="learning_rate")
        self.best_error = tf.Variable(math.inf, trainable=False, dtype=tf.float64,
                                      name="best_error")
        # Counts evaluations; the name is the one checkpoints have always used.
        self.epochs_without_improvement = tf.Variable(0, trainable=False,
                                                      name="epochs_without_improvement")
        self.reductions = tf.Variable(0, trainable=False, name="reductions")

    def begin_epoch(self, epoch):
        """The plateau rule does not look at the epoch; returns False."""
        del epoch
        return False

    def record(self, validation_error):
        """Records an evaluation's validation error; returns True if the rate was reduced."""
        if validation_error < float(self.best_error) - self.min_delta:
            self.best_error.assign(validation_error)
            self.epochs_without_improvement.assign(0)
            return False
        self.epochs_without_improvement.assign_add(1)
        if (int(self.epochs_without_improvement) >= self.patience
                and int(self.reductions) < self.max_reductions):
            self.learning_rate.assign(float(self.learning_rate) * self.factor)
            self.reductions.assign_add(1)
            self.epochs_without_improvement.assign(0)
            return True
        return False

    def ended(self):
        """True once the error has stopped improving again after the last of
        max_reductions divisions: where the paper's runs ended ("reduced three times
        prior to termination")."""
        return (int(self.reductions) >= self.max_reductions
                and int(self.epochs_without_improvement) >= self.patience)

    def restart_from(self, initial_learning_rate, epoch):
        """A new initial rate for a resumed run: the rate becomes it times the reductions
        made so far."""
        del epoch
        self.learning_rate.assign(float(initial_learning_rate)
                                  * self.factor ** int(self.reductions))


class StepSchedule(tf.Module):
    """The alternative to the plateau rule: multiply by `factor` at fixed epochs."""

    def __init__(self, initial_learning_rate=PAPER_LEARNING_RATE, boundaries=STEP_BOUNDARIES,
                 factor=PAPER_LR_FACTOR, name=None):
        super().__init__(name=name)
        self.initial_learning_rate = float(initial_learning_rate)
        self.boundaries = sorted(int(b) for b in boundaries)
        self.factor = float(factor)
        self.learning_rate = tf.Variable(self.initial_learning_rate, trainable=False,
                                         name="learning_rate")

    def rate_for_epoch(self, epoch):
        """The rate for training epoch `epoch` (0-based)."""
        passed = sum(1 for b in self.boundaries if epoch >= b)
        return self.initial_learning_rate * self.factor**passed

    def begin_epoch(self, epoch):
        """Sets the rate for `epoch` (0-based); returns True if it changed."""
        new_rate = self.rate_for_epoch(epoch)
        changed = not math.isclose(new_rate, float(self.learning_rate), rel_tol=1e-6)
        self.learning_rate.assign(new_rate)
        return changed

    def record(self, validation_error):
        """The step rule ignores the validation error; returns False."""
        del validation_error
        return False

    def ended(self):
        """A step schedule runs to the budget."""
        return False

    def restart_from(self, initial_learning_rate, epoch):
        self.initial_learning_rate = float(initial_learning_rate)
        self.begin_epoch(epoch)


def top_k_misses(logits, labels, k):
    """How many examples' labels are not among the k highest scores (the count behind
    Section 4's top-1 and top-5 error rates). `logits` may be probabilities; ties count
    as hits."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    hits = tf.math.in_top_k(labels, tf.cast(logits, tf.float32), k)
    return tf.reduce_sum(1.0 - tf.cast(hits, tf.float32))
