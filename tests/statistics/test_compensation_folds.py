"""The compensation statistics keep each fold of the calibration windows apart (window j of the sample in fold
j mod FOLDS, padding excluded), and the folds add up to the whole sample's moments."""

import torch
from torch import nn

from lowrank.statistics.moments import FOLDS, CrossMomentCollector, SharedInputs, begin_batch


def test_folds_are_the_windows_by_parity_across_batches_and_add_up_to_the_whole():
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(4, 3)
    collector = CrossMomentCollector(layer, gradients=False)
    windows = []  # (x, x_hat) of each window's real tokens, in sample order
    with torch.no_grad():
        for size in (3, 2):  # the second batch starts at window 3: fold 1
            dense = torch.randn(size, 5, 4, generator=g)
            compressed = dense + 0.1 * torch.randn(size, 5, 4, generator=g)
            mask = torch.rand(size, 5, generator=g) > 0.3
            begin_batch([collector], size, mask, SharedInputs())
            collector.phase = "dense"
            layer(dense)
            collector.phase = "compressed"
            layer(compressed)
            windows += [(dense[j][mask[j]].double(), compressed[j][mask[j]].double()) for j in range(size)]
    stats = collector.result(examples=5)
    collector.remove()
    assert FOLDS == 2 and stats["fold_cross_moment"].shape == (FOLDS, 4, 4)
    for k in range(FOLDS):
        x = torch.cat([w[0] for j, w in enumerate(windows) if j % FOLDS == k])
        x_hat = torch.cat([w[1] for j, w in enumerate(windows) if j % FOLDS == k])
        assert float(stats["fold_tokens"][k]) == x.shape[0]
        torch.testing.assert_close(stats["fold_cross_moment"][k], (x.T @ x_hat / x.shape[0]).float())
        torch.testing.assert_close(stats["fold_compressed_moment"][k], (x_hat.T @ x_hat / x.shape[0]).float())
    share = (stats["fold_tokens"] / stats["fold_tokens"].sum())[:, None, None]
    torch.testing.assert_close((stats["fold_cross_moment"] * share).sum(0), stats["cross_moment"])
    torch.testing.assert_close((stats["fold_compressed_moment"] * share).sum(0), stats["compressed_moment"])
