"""The built-in Transformer tasks: registered, deterministic data with the stated rule, and the
two attention kinds (cheap: no training here; test_trials_attention compresses small ones)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trials import BUILTIN_TASKS, load_task
from trials.tasks import TransformerLinearTask, TransformerTask
from trials.tasks._transformer import (
    CLASSES,
    SEQ_LEN,
    VOCAB,
    LinearSelfAttention,
    counting_sequences,
)


def test_both_variants_are_registered() -> None:
    assert BUILTIN_TASKS["transformer"] is TransformerTask
    assert BUILTIN_TASKS["transformer-linear"] is TransformerLinearTask
    assert isinstance(load_task("transformer-linear"), TransformerLinearTask)


def test_data_are_deterministic_and_follow_the_rule() -> None:
    x, y = counting_sequences(2000, seed=3)
    x2, y2 = counting_sequences(2000, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert x.shape == (2000, SEQ_LEN) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() < VOCAB
    counts = (x[:, 1:] == x[:, :1]).sum(axis=1)
    agree = float(np.mean(counts == y))
    assert 0.95 < agree < 0.99  # 4 % of the labels are random (a quarter of those by chance right)
    assert set(np.unique(y)) == set(range(CLASSES))


def test_models_have_the_two_attention_kinds() -> None:
    task = TransformerTask()
    x, y = task.train_data()
    assert x.shape == (6000, SEQ_LEN) and y.dtype == torch.int64
    mha = task.build_model()
    linear = TransformerLinearTask().build_model()
    assert sum(isinstance(m, nn.MultiheadAttention) for m in mha.modules()) == 2
    assert sum(isinstance(m, LinearSelfAttention) for m in linear.modules()) == 2
    for model in (mha, linear):
        assert any(isinstance(m, nn.Embedding) for m in model.modules())
        model.eval()
        with torch.no_grad():
            assert model(x[:3]).shape == (3, CLASSES)
