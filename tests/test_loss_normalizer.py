"""batching.LossNormalizer: the micro-batches' shares add up to TRL 1.16's formula applied once to the global batch,
for every loss type, however unevenly the rows are cut and with completions that have no token in the loss (masked
as truncated). The per-token losses are float64; token_weights are fp32, so the identity holds to fp32 rounding of
each weight and of the 91-term sums (tests/_tolerance.py)."""
import pytest
import torch
from _tolerance import sum_rtol

from semgrpo.batching import LossNormalizer
from semgrpo.ops import TRL_LOSS_TYPES
from semgrpo.ops.policy_loss import token_weights

L = 7  # max_completion_length


def _trl_global(per_token, mask, loss_type):
    """TRL 1.16's aggregation of per-token losses over one batch (written out, not token_weights)."""
    m = mask.double()
    if loss_type in ("grpo", "sapo"):
        return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "luspo":
        return (per_token * m).sum(-1).mean()
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / (per_token.shape[0] * L)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)  # bnpo; dapo/cispo/vespo with the global token count


@pytest.mark.parametrize("loss_type", TRL_LOSS_TYPES)
def test_micro_batch_shares_add_up_to_the_global_formula(loss_type):
    g = torch.Generator().manual_seed(0)
    n = 13
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).double()
    mask[[2, 9]] = 0  # masked truncated completions: in the batch, no token in the loss
    per_token = torch.randn(n, L, generator=g, dtype=torch.float64)
    want = _trl_global(per_token, mask, loss_type)
    norm = LossNormalizer(loss_type, sequences=n, tokens=float(mask.sum()), ranks_times_accumulation=1)
    for cut in ([0, 13], [0, 1, 5, 5, 13], [0, 3, 4, 12, 13]):  # uneven, one empty micro-batch
        total = torch.zeros((), dtype=torch.float64)
        for a, b in zip(cut[:-1], cut[1:]):
            if a == b:
                continue
            m = mask[a:b]
            local = (token_weights(m, loss_type=loss_type, max_completion_length=L,
                                   num_items_in_batch=norm.num_items_in_batch).double() * per_token[a:b]).sum()
            total += norm.share(rows=b - a, tokens=float(m.sum())) * local
        torch.testing.assert_close(total, want, rtol=sum_rtol(torch.float32, n * L), atol=0.0)


def test_a_batch_with_no_token_in_the_loss_has_zero_shares():
    for loss_type in TRL_LOSS_TYPES:
        norm = LossNormalizer(loss_type, sequences=4, tokens=0.0, ranks_times_accumulation=2)
        assert norm.num_items_in_batch is None
        share = norm.share(rows=2, tokens=0.0)
        assert share == (0.5 if loss_type in ("grpo", "sapo", "luspo", "dr_grpo") else 0.0 if loss_type == "bnpo"
                         else 1.0)
