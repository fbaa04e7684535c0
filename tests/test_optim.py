"""The paper's update, schedules and error rates against NumPy and by-hand values."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import optim


def numpy_paper_update(weights, velocities, gradients, lr, decays, momentum=0.9):
    """Section 5, float64: v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v."""
    new_w, new_v = [], []
    for w, v, g, d in zip(weights, velocities, gradients, decays):
        v = momentum * v - d * lr * w - lr * g
        new_v.append(v)
        new_w.append(w + v)
    return new_w, new_v


@pytest.mark.parametrize("decay_biases", [False, True])
def test_several_steps_match_numpy(decay_biases):
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 2, 4), (4,), (6, 5), (5,)]
    init = [rng.standard_normal(s) for s in shapes]
    variables = [tf.Variable(w, dtype=tf.float32) for w in init]
    sgd = optim.PaperMomentumSGD(variables, decay_biases=decay_biases)
    step = tf.function(lambda grads, lr: sgd.apply(grads, variables, lr))

    weights = [w.astype(np.float32).astype(np.float64) for w in init]
    velocities = [np.zeros(s) for s in shapes]
    decays = [0.0005 if (len(s) > 1 or decay_biases) else 0.0 for s in shapes]
    for lr in (0.01, 0.01, 0.001, 0.01, 0.1):
        grads = [rng.standard_normal(s) for s in shapes]
        step([tf.constant(g, tf.float32) for g in grads], tf.constant(lr))
        weights, velocities = numpy_paper_update(weights, velocities, grads, lr, decays)
    for variable, w in zip(variables, weights):
        np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5, atol=1e-6)
    for velocity, v in zip(sgd.velocities, velocities):
        np.testing.assert_allclose(velocity.numpy(), v, rtol=1e-4, atol=1e-7)


def test_first_step_by_hand():
    # w = 2, g = 1, lr = 0.1: v = -0.0005 * 0.1 * 2 - 0.1 * 1 = -0.1001; w = 1.8999.
    w = tf.Variable([[2.0]])
    b = tf.Variable([2.0])
    sgd = optim.PaperMomentumSGD([w, b])
    sgd.apply([tf.constant([[1.0]]), tf.constant([1.0])], [w, b], 0.1)
    np.testing.assert_allclose(w.numpy(), [[1.8999]], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [1.9], rtol=1e-6)  # no decay on the bias


def test_wrong_number_of_gradients_is_an_error():
    w = tf.Variable([1.0])
    with pytest.raises(ValueError, match="Got 2 gradients for 1 variables"):
        optim.PaperMomentumSGD([w]).apply([tf.ones(1), tf.ones(1)], [w], 0.1)


def test_plateau_schedule_divides_by_ten_after_patience_at_most_three_times():
    schedule = optim.PlateauSchedule(0.01, patience=2, min_delta=0.01)
    errors = [0.9, 0.8, 0.795, 0.792,  # 0.795, 0.792 are within min_delta of 0.8: reduce
              0.7, 0.71, 0.70,         # no improvement twice: reduce
              0.70, 0.70,              # reduce (third time)
              0.70, 0.70, 0.70, 0.70]  # no more reductions
    rates, reduced = [], []
    for error in errors:
        reduced.append(schedule.record(error))
        rates.append(float(schedule.learning_rate))
    assert [i for i, r in enumerate(reduced) if r] == [3, 6, 8]
    np.testing.assert_allclose(rates[3], 1e-3, rtol=1e-6)
    np.testing.assert_allclose(rates[6], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(rates[-1], 1e-5, rtol=1e-6)
    assert int(schedule.reductions) == 3
    np.testing.assert_allclose(float(schedule.best_error), 0.7)


def test_plateau_schedule_state_survives_a_checkpoint(tmp_path):
    schedule = optim.PlateauSchedule(0.01, patience=1)
    schedule.record(0.5)
    schedule.record(0.6)  # reduce
    path = tf.train.Checkpoint(schedule=schedule).write(str(tmp_path / "ckpt"))
    restored = optim.PlateauSchedule(0.01, patience=1)
    tf.train.Checkpoint(schedule=restored).read(path).assert_consumed()
    np.testing.assert_allclose(float(restored.learning_rate), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(restored.best_error), 0.5)
    assert int(restored.reductions) == 1


def test_step_schedule():
    schedule = optim.StepSchedule(0.01, boundaries=(2, 4))
    rates = []
    for epoch in range(6):
        schedule.begin_epoch(epoch)
        schedule.record(0.0)  # the step rule ignores the validation error
        rates.append(float(schedule.learning_rate))
    np.testing.assert_allclose(rates, [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-6)


@pytest.mark.parametrize("schedule, epoch, expected", [
    (optim.PlateauSchedule(0.01, patience=1), 5, 0.002 * 0.1),
    (optim.StepSchedule(0.01, boundaries=(2, 4)), 3, 0.002 * 0.1),
])
def test_a_new_initial_rate_on_resume_keeps_the_reductions_made(schedule, epoch, expected):
    schedule.begin_epoch(epoch)
    schedule.record(0.5)
    schedule.record(0.6)  # the plateau rule reduces here; the step rule has at epoch 2
    schedule.restart_from(0.002, epoch)
    np.testing.assert_allclose(float(schedule.learning_rate), expected, rtol=1e-6)


def test_top_k_misses_by_hand():
    logits = tf.constant([[0.1, 0.5, 0.2, 0.0],   # label 1: top-1 hit
                          [0.9, 0.05, 0.03, 0.02],  # label 2: top-1 miss, top-3 hit
                          [0.1, 0.2, 0.3, 0.4]])    # label 0: misses top-3
    labels = tf.constant([1, 2, 0])
    assert float(optim.top_k_misses(logits, labels, 1)) == 2
    assert float(optim.top_k_misses(logits, labels, 3)) == 1
    # Probabilities as NumPy arrays, as alexnet_tf.evaluate passes them; a tie with the
    # label counts in its favour.
    tied = np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4]])
    assert float(optim.top_k_misses(tied, np.array([1, 2]), 1)) == 0


def test_skipped_update_leaves_weights_and_velocities_as_they_were():
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (4,)]
    init = [rng.standard_normal(s) for s in shapes]
    variables = [tf.Variable(w, dtype=tf.float32) for w in init]
    sgd = optim.PaperMomentumSGD(variables)
    step = tf.function(lambda grads, lr, apply: sgd.apply(grads, variables, lr, apply))

    weights = [w.astype(np.float32).astype(np.float64) for w in init]
    velocities = [np.zeros(s) for s in shapes]
    decays = [0.0005, 0.0]
    for apply in (True, False, True):
        grads = [rng.standard_normal(s) for s in shapes]
        if not apply:  # what an overflowing float16 step hands on
            grads[0][0, 0] = np.inf
            grads[1][1] = np.nan
        before = [v.numpy() for v in variables + sgd.velocities]
        step([tf.constant(g, tf.float32) for g in grads], tf.constant(0.01), tf.constant(apply))
        if apply:
            weights, velocities = numpy_paper_update(weights, velocities, grads, 0.01, decays)
        else:
            for variable, value in zip(variables + sgd.velocities, before):
                np.testing.assert_array_equal(variable.numpy(), value)
    for variable, w in zip(variables, weights):
        np.testing.assert_allclose(variable.numpy(), w, rtol=1e-5, atol=1e-6)
    for velocity, v in zip(sgd.velocities, velocities):
        np.testing.assert_allclose(velocity.numpy(), v, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("in_function", [False, True])
def test_loss_scale_halves_on_overflow_and_doubles_after_growth_steps(in_function):
    loss_scale = optim.DynamicLossScale(initial_scale=8.0, growth_steps=3, min_scale=1.0)
    update = tf.function(loss_scale.update) if in_function else loss_scale.update
    finite = [True, True, True, True, False, True, False, False, False, False]
    # By hand: the third finite step in a row doubles 8 to 16 and restarts the count;
    # each overflow halves the scale and restarts the count; 1 is the floor.
    scales = [8, 8, 16, 16, 8, 8, 4, 2, 1, 1]
    counts = [1, 2, 0, 1, 0, 1, 0, 0, 0, 0]
    for ok, scale, count in zip(finite, scales, counts):
        update(tf.constant(ok))
        assert float(loss_scale.scale) == scale
        assert int(loss_scale.good_steps) == count


def test_loss_scale_does_not_grow_past_float32():
    loss_scale = optim.DynamicLossScale(initial_scale=2.0**127, growth_steps=1)
    loss_scale.update(True)
    assert float(loss_scale.scale) == 2.0**127  # 2^128 is inf in float32


def test_loss_scale_scales_the_loss_and_unscales_gradients():
    loss_scale = optim.DynamicLossScale(initial_scale=2.0**10)
    assert float(loss_scale.scale_loss(tf.constant(0.5))) == 512.0
    scaled16 = loss_scale.scale_loss(tf.constant(0.5, tf.float16))
    assert scaled16.dtype == tf.float16 and float(scaled16) == 512.0
    g32, g16 = loss_scale.unscale([tf.constant([1024.0, 3.0]), tf.constant([2048.0], tf.float16)])
    np.testing.assert_array_equal(g32.numpy(), [1.0, 3.0 / 1024])
    assert g16.dtype == tf.float16 and float(g16[0]) == 2.0


def test_loss_scaling_keeps_float16_gradients_that_would_flush_to_zero():
    # d(w a b)/dw = a b = 1e-8, below float16's smallest subnormal (6e-8).
    w = tf.Variable(1.0)
    a = tf.constant(1e-4, tf.float16)
    loss_scale = optim.DynamicLossScale(initial_scale=2.0**15)

    def gradient(scale_loss):
        with tf.GradientTape() as tape:
            loss = tf.cast(w, tf.float16) * a * a
            if scale_loss:
                loss = loss_scale.scale_loss(loss)
        (g,) = tape.gradient(loss, [w])
        return loss_scale.unscale([g])[0] if scale_loss else g

    assert float(gradient(scale_loss=False)) == 0.0
    np.testing.assert_allclose(float(gradient(scale_loss=True)), 1e-8, rtol=2e-3)


def test_all_finite_by_hand():
    assert bool(optim.all_finite([tf.constant([1.0, -2.0]), tf.constant([3.0], tf.float16)]))
    assert not bool(optim.all_finite([tf.constant([1.0, np.inf]), tf.constant([3.0])]))
    assert not bool(optim.all_finite([tf.constant([1.0]), tf.constant([np.nan], tf.float16)]))


def test_loss_scale_survives_a_checkpoint(tmp_path):
    loss_scale = optim.DynamicLossScale(initial_scale=64.0, growth_steps=5)
    loss_scale.update(False)
    loss_scale.update(True)
    path = tf.train.Checkpoint(loss_scale=loss_scale).write(str(tmp_path / "ckpt"))
    restored = optim.DynamicLossScale()
    tf.train.Checkpoint(loss_scale=restored).read(path).assert_consumed()
    assert float(restored.scale) == 32.0 and int(restored.good_steps) == 1


def test_loss_scale_arguments_are_checked():
    with pytest.raises(ValueError, match="initial_scale=0.5 must be finite and at least"):
        optim.DynamicLossScale(initial_scale=0.5)
    with pytest.raises(ValueError, match="growth_steps=0 must be at least 1 and factor=2.0"):
        optim.DynamicLossScale(growth_steps=0)
