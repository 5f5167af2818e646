"""Batch augmentations and evaluation metrics against direct computations."""
import numpy as np
import pytest
import torch

from audio_mrkd.config_schema import AugmentConfig
from audio_mrkd.data import augment
from audio_mrkd.train.metrics import classification_metrics, expected_calibration_error, mean_std


def test_time_roll_is_a_per_item_circular_shift():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 1, 3, 10)
    rolled = augment.time_roll(x, 0.3)
    for i in range(2):
        shifts = [s for s in range(-3, 4) if torch.equal(torch.roll(x[i], s, dims=-1), rolled[i])]
        assert len(shifts) == 1
    assert torch.equal(augment.time_roll(x, 0.0), x)


def test_spec_masks_zero_one_band_per_item():
    torch.manual_seed(1)
    x = torch.ones(16, 1, 20, 30)
    masked = augment.spec_mask(x, 8, axis=2)
    zero_rows = (masked == 0).all(dim=3)[:, 0]  # B×F rows fully masked
    assert (zero_rows.sum(dim=1) < 8).all() and zero_rows.any()
    assert ((masked == 0) | (masked == 1)).all()
    bands = [np.flatnonzero(r.numpy()) for r in zero_rows]
    assert all(len(b) == 0 or (np.diff(b) == 1).all() for b in bands)  # contiguous
    time_masked = augment.spec_mask(x, 5, axis=3)
    assert (time_masked == 0).all(dim=2)[:, 0].sum(dim=1).max() < 5


def test_freq_mixstyle_mixes_frequency_statistics():
    torch.manual_seed(2)
    x = torch.randn(8, 1, 16, 40) * torch.linspace(0.5, 3, 8)[:, None, None, None] + torch.arange(8.0)[:, None, None, None]
    out = augment.freq_mixstyle(x, p=1.0, alpha=0.3)
    assert out.shape == x.shape and not torch.allclose(out, x)
    mu_in, mu_out = x.mean(dim=(1, 3)), out.mean(dim=(1, 3))
    lo, hi = mu_in.min(dim=0).values, mu_in.max(dim=0).values
    assert ((mu_out >= lo - 1e-4) & (mu_out <= hi + 1e-4)).all()  # convex mixes of the batch's means
    assert torch.equal(augment.freq_mixstyle(x, p=0.0, alpha=0.3), x)


def test_mixup_soft_targets():
    torch.manual_seed(3)
    x = torch.randn(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    mixed, soft, mixing = augment.mixup(x, y, 3, alpha=0.4)
    assert soft.shape == (6, 3) and torch.allclose(soft.sum(1), torch.ones(6))
    lam = soft[torch.arange(6), y].min()  # own label keeps at least lam (more if the partner shares it)
    assert 0 <= lam <= 1
    # the mixing travels with the batch: it rebuilds both the inputs and the soft targets exactly
    assert torch.equal(mixing.labels, y) and sorted(mixing.perm.tolist()) == list(range(6))
    assert torch.allclose(mixed, mixing.lam * x + (1 - mixing.lam) * x[mixing.perm])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(soft, mixing.rows(onehot))


def test_random_crop_and_flip():
    torch.manual_seed(4)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    cropped = augment.random_crop(x, 2)
    assert cropped.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], cropped[i])]
        assert hits
    flipped = augment.random_hflip(x)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1))


def test_augment_batch_all_off_is_identity():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    out_x, out_y, mixing = augment.augment_batch(x, y, AugmentConfig(), 2)
    assert torch.equal(out_x, x) and torch.equal(out_y, y) and mixing is None


def test_metrics_against_hand_computation():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    labels = np.array([0, 1, 1, 2, 0])
    recording_devices = np.array([0, 0, 1, 1, 1])
    m = classification_metrics(probs, labels, ["x", "y", "z"], recording_devices, ["a", "s1"],
                               {"a": "real", "s1": "seen_sim"})
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"] == pytest.approx({"x": 0.5, "y": 0.5, "z": 1.0})
    assert m["macro_accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.4, 0.6, 0.3])))
    assert m["per_device"] == pytest.approx({"a": 1.0, "s1": 1 / 3})
    assert m["per_device_group"] == pytest.approx({"real": 1.0, "seen_sim": 1 / 3})
    assert m["per_class_count"] == {"x": 2, "y": 2, "z": 1}  # the clips each accuracy rests on
    assert m["per_device_count"] == {"a": 2, "s1": 3}
    assert m["per_device_group_count"] == {"real": 2, "seen_sim": 3}
    assert m["confusion"] == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert m["top5"] == 1.0


def test_ece_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    # bin (0.9,0.967]: conf 0.95, acc 0.5 → 0.45·0.5 ; bin (0.533,0.6]: conf 0.55, acc 1 → 0.45·0.5
    assert expected_calibration_error(probs, labels) == pytest.approx(0.45)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([5.0])["std"] == 0.0


def test_counts_skip_empty_groups_and_print_with_the_accuracy():
    from audio_mrkd.train.metrics import with_counts
    probs = np.eye(4)[[0, 0, 2, 2, 1, 0]]
    labels = np.array([0, 0, 2, 2, 2, 2])  # class 1 and 3 have no clips; device s2 has none, "x" has no group
    recording_devices = np.array([0, 0, 0, 2, 2, 2])
    m = classification_metrics(probs, labels, ["w", "v", "u", "t"], recording_devices, ["a", "s2", "x"],
                               {"a": "real", "s2": "unseen_sim"})
    assert m["per_class_count"] == {"w": 2, "u": 4} and set(m["per_class"]) == {"w", "u"}
    assert m["per_device_count"] == {"a": 3, "x": 3} and set(m["per_device"]) == {"a", "x"}
    assert m["per_device_group_count"] == {"real": 3}  # clips of a device outside the groups are not counted
    assert sum(m["per_class_count"].values()) == sum(m["per_device_count"].values()) == m["n_items"] == 6
    assert with_counts(m, "per_class") == [("w", "1.0000 (n=2)"), ("u", "0.5000 (n=4)")]
    old = {"per_device": {"a": 0.5}}  # a metrics.json written before the counts: the accuracy alone
    assert with_counts(old, "per_device") == [("a", "0.5000")] and with_counts(old, "per_class") == []


def test_macro_accuracy_is_the_mean_of_the_per_class_accuracies_bit_for_bit(recwarn):
    from audio_mrkd.train.metrics import macro_accuracy
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_classes, n = int(rng.integers(2, 12)), int(rng.integers(1, 300))
        labels = rng.integers(0, n_classes, n)
        pred = np.where(rng.random(n) < 0.6, labels, rng.integers(0, n_classes, n))
        per_class = [(pred[labels == c] == c).mean() for c in np.unique(labels)]
        assert macro_accuracy(labels, pred) == float(np.mean(per_class))
    # a predicted class without clips of its own counts for nothing, and says nothing
    assert macro_accuracy(np.array([0, 0, 1]), np.array([0, 2, 1])) == 0.75
    assert not [w for w in recwarn if "y_pred contains classes" in str(w.message)]
    assert np.isnan(macro_accuracy(np.array([], dtype=np.int64), np.array([], dtype=np.int64)))
