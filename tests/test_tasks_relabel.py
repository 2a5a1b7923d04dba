"""Halves of a dataset and new labels on the same inputs (the Ng's-rule recipe: digits -> parity)."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from transferlab.errors import ConfigError
from transferlab.run.setup import prepare


def _rows(*tensors):
    return {t.numpy().tobytes() for x in tensors for t in x}


def test_parts_are_disjoint_and_parity_labels_are_right(make_cfg):
    prep = prepare(make_cfg("source=digits_a_all", "target=digits_b_parity", "target.n_per_class=5"))
    src, tgt = prep.source, prep.target
    assert src.class_names == [str(i) for i in range(10)] and tgt.class_names == ["even", "odd"]
    assert not _rows(src.train_x, src.val_x, src.test_x) & _rows(tgt.train_x, tgt.val_x, tgt.test_x)
    n_all = len(load_digits().target)
    sizes = [sum(len(t) for t in (d.train_y, d.val_y, d.test_y)) for d in (src, tgt)]
    assert abs(sizes[0] - sizes[1]) <= 1 and sum(sizes) == n_all
    # Every parity label agrees with the digit the image shows (looked up in sklearn's own labels).
    digits = load_digits()
    truth = {(img / 16.0).astype(np.float32).tobytes(): int(lbl) for img, lbl in zip(digits.images, digits.target)}
    for x, y in ((tgt.test_x, tgt.test_y), (tgt.train_x, tgt.train_y)):
        got = [truth[xi[0].numpy().tobytes()] % 2 for xi in x]
        assert got == y.tolist()
    assert np.bincount(tgt.train_y[tgt.train_indices].numpy()).tolist() == [5, 5]


def test_bad_relabel_and_part_name_the_key(make_cfg):
    with pytest.raises(ConfigError, match=r"target.part='c'"):
        prepare(make_cfg("target.part=c"))
    with pytest.raises(ConfigError, match=r"target.relabel.odd"):
        prepare(make_cfg("target=digits_b_parity", "target.relabel.odd=[1,3,5,7,8]"))
