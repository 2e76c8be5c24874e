"""OpCounter: it must see the host reads it exists to find, and only those."""

from __future__ import annotations

import torch

from mitools.op_trace import HOST_FACTORY_OPS, OpCounter


def test_counter_sees_host_reads_and_mask_indexing_but_not_integer_indexing():
    x = torch.randn(6, 4)
    with OpCounter() as ops:
        float(x.sum())  # .item(): a host read
        x[x > 0]  # boolean mask: nonzero inside
    assert ops.syncs["_local_scalar_dense"] == 1 and ops.syncs["index"] == 1
    with OpCounter() as ops:
        x[torch.arange(3)]  # integer gather
        y = x.clone()
        y[torch.arange(2), torch.arange(2)] = 0.0  # integer scatter
        (x * 2).sum()
    assert not ops.syncs, ops.syncs
    assert ops.counts["index"] == 1 and ops.counts["index_put_"] == 1


def test_counter_separates_views_from_launches_and_spots_host_tensors():
    x = torch.randn(6, 4)
    with OpCounter() as ops:
        x.T.unsqueeze(0)  # metadata only
        x.view(-1)
        x + 1
    assert ops.launches == 1 and ops.total > ops.launches
    with OpCounter() as ops:
        torch.tensor([1.0, 2.0])
    assert ops.count(HOST_FACTORY_OPS) == 1
