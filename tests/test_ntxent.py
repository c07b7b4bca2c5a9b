"""NT-Xent against a float64 loop-by-loop reference, and the 2-process gloo equivalence of the gathered losses
(NT-Xent, the identity-aware SSL loss and the fine-tuning sequence loss) with one process on the whole batch."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reid.core.losses.identity_ssl import IdentityAwareSSLLoss
from reid.core.losses.metric import SequencePairLoss
from reid.core.losses.ntxent import NTXentLoss
from reid.runtime.raycluster import free_ports


def reference_ntxent(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> float:
    """SimCLR's loss written loop by loop in float64 (independent of the vectorised code)."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    m = len(z_a)
    total = 0.0
    for i in range(2 * m):
        positive = (i + m) % (2 * m)
        numerator = math.exp(float(z[i] @ z[positive]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * m) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * m)


def reference_ntxent_torch(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same loop in float64 torch scalars, for reference gradients."""
    z = torch.cat([z_a, z_b]).double()
    z = z / z.norm(dim=1, keepdim=True)
    m = len(z_a)
    terms = []
    for i in range(2 * m):
        positive = (i + m) % (2 * m)
        others = torch.stack([z[i] @ z[k] / temperature for k in range(2 * m) if k != i])
        terms.append(torch.logsumexp(others, dim=0) - z[i] @ z[positive] / temperature)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("n", [1, 2, 5, 9])
@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_value_matches_loop_reference(n: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + int(temperature * 100))
    z_a = torch.randn(n, 6, generator=gen, dtype=torch.float64) * 3  # not normalised on purpose
    z_b = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    loss = NTXentLoss(temperature)(z_a, z_b)
    assert loss.item() == pytest.approx(reference_ntxent(z_a.numpy(), z_b.numpy(), temperature), rel=1e-10)


@pytest.mark.parametrize("n, temperature", [(3, 0.07), (6, 0.3)])
def test_gradient_matches_loop_reference(n: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(n)
    z_a = torch.randn(n, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(n, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(NTXentLoss(temperature)(z_a, z_b), [z_a, z_b])
    reference = torch.autograd.grad(reference_ntxent_torch(z_a, z_b, temperature), [z_a, z_b])
    for got, want in zip(grads, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_float32_close_to_float64_reference() -> None:
    gen = torch.Generator().manual_seed(7)
    z_a, z_b = torch.randn(16, 32, generator=gen), torch.randn(16, 32, generator=gen)
    want = reference_ntxent(z_a.double().numpy(), z_b.double().numpy(), 0.07)
    assert NTXentLoss(0.07)(z_a, z_b).item() == pytest.approx(want, rel=1e-5)


def test_empty_batch_is_zero_and_differentiable() -> None:
    z = torch.zeros(0, 4, requires_grad=True)
    loss = NTXentLoss()(z, z)
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(loss)


def test_rejects_mismatched_views_and_bad_temperature() -> None:
    with pytest.raises(ValueError, match="must both be"):
        NTXentLoss()(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)


# ---- two processes, gloo ---------------------------------------------------------------------------

NTXENT_CASES = {"equal": [4, 4], "unequal": [3, 5], "one_empty": [0, 3]}
# Identity-aware: (face sizes, body sizes, paired sizes) per rank; rank 1 has no face<->body pair.
IDENTITY_SIZES = ([4, 2], [3, 3], [2, 0])
IDENTITY_WEIGHTS = {"face_weight": 1.0, "body_weight": 0.5, "identity_weight": 2.0}
TEMPERATURE = 0.1
# Sequence loss: rank 0 holds sequences 0 and 1 (series 7), rank 1 sequence 2 (series 7) and 3 (series 9), with
# *local* sequence ids 0 and 1 on both ranks (as collate_sequences numbers them), so ids collide across ranks.
SEQ_CHARS = torch.tensor([0, 0, 1, 2, 0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 0])
SEQ_GLOBAL = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
SEQ_LOCAL = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1])
SEQ_SERIES = torch.tensor([7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 9, 9, 9, 9])
SEQ_SIZES = [8, 7]


def _global_batch(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=gen, dtype=torch.float64), torch.randn(
        n, 8, generator=gen, dtype=torch.float64
    )


def _local(tensors: tuple[torch.Tensor, ...], sizes: list[int], rank: int) -> list[torch.Tensor]:
    start = sum(sizes[:rank])
    return [t[start : start + sizes[rank]].clone().requires_grad_(True) for t in tensors]


def _sequence_embeddings() -> torch.Tensor:
    return torch.randn(len(SEQ_CHARS), 6, generator=torch.Generator().manual_seed(20), dtype=torch.float64)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        results: dict[str, object] = {}
        for seed, (case, sizes) in enumerate(NTXENT_CASES.items()):
            z_a, z_b = _local(_global_batch(seed, sum(sizes)), sizes, rank)
            loss = NTXentLoss(TEMPERATURE, gather_distributed=True)(z_a, z_b)
            loss.backward()
            local_only = NTXentLoss(TEMPERATURE, gather_distributed=False)(z_a.detach(), z_b.detach())
            results[case] = (loss.detach(), z_a.grad, z_b.grad, local_only)
        inputs = []
        for seed, sizes in zip((10, 11, 12), IDENTITY_SIZES, strict=True):
            inputs += _local(_global_batch(seed, sum(sizes)), sizes, rank)
        criterion = IdentityAwareSSLLoss(TEMPERATURE, gather_distributed=True, **IDENTITY_WEIGHTS)
        total, terms = criterion(*inputs)
        total.backward()
        results["identity"] = (
            total.detach(),
            {k: v.detach() for k, v in terms.items()},
            [t.grad for t in inputs],
        )
        (emb,) = _local((_sequence_embeddings(),), SEQ_SIZES, rank)
        rows = slice(sum(SEQ_SIZES[:rank]), sum(SEQ_SIZES[: rank + 1]))
        seq_loss = SequencePairLoss(0.1, 0.9, gather_distributed=True)(
            emb, SEQ_CHARS[rows], SEQ_LOCAL[rows], SEQ_SERIES[rows]
        )
        seq_loss.backward()
        results["sequence"] = (seq_loss.detach(), emb.grad)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, free_ports(1)[0], str(out_dir)), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", list(NTXENT_CASES))
def test_gathered_loss_and_gradients_equal_single_process(gloo_results: list[dict], case: str) -> None:
    sizes = NTXENT_CASES[case]
    seed = list(NTXENT_CASES).index(case)
    z_a, z_b = (t.clone().requires_grad_(True) for t in _global_batch(seed, sum(sizes)))
    global_loss = NTXentLoss(TEMPERATURE)(z_a, z_b)
    global_loss.backward()
    assert global_loss.item() == pytest.approx(
        reference_ntxent(z_a.detach().numpy(), z_b.detach().numpy(), TEMPERATURE)
    )
    losses = [r[case][0] for r in gloo_results]
    # DDP averages over ranks: the mean of the per-rank losses and gradients is the global one.
    assert torch.stack(losses).mean().item() == pytest.approx(global_loss.item(), rel=1e-12)
    world = len(gloo_results)
    grad_a = torch.cat([r[case][1] for r in gloo_results]) / world
    grad_b = torch.cat([r[case][2] for r in gloo_results]) / world
    torch.testing.assert_close(grad_a, z_a.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(grad_b, z_b.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_without_gather_flag_each_rank_sees_only_its_batch(gloo_results: list[dict]) -> None:
    sizes = NTXENT_CASES["equal"]
    z_a, z_b = _global_batch(0, sum(sizes))
    for rank, result in enumerate(gloo_results):
        lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
        want = reference_ntxent(z_a[lo:hi].numpy(), z_b[lo:hi].numpy(), TEMPERATURE)
        assert result["equal"][3].item() == pytest.approx(want, rel=1e-10)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gathered_identity_loss_equals_single_process(gloo_results: list[dict]) -> None:
    inputs = []
    for seed, sizes in zip((10, 11, 12), IDENTITY_SIZES, strict=True):
        inputs += [t.clone().requires_grad_(True) for t in _global_batch(seed, sum(sizes))]
    total, terms = IdentityAwareSSLLoss(TEMPERATURE, **IDENTITY_WEIGHTS)(*inputs)
    total.backward()
    world = len(gloo_results)
    assert torch.stack([r["identity"][0] for r in gloo_results]).mean().item() == pytest.approx(
        total.item(), rel=1e-12
    )
    for name, term in terms.items():
        mean_term = torch.stack([r["identity"][1][name] for r in gloo_results]).mean()
        assert mean_term.item() == pytest.approx(term.item(), rel=1e-12)
    for i, (tensor, sizes) in enumerate(
        zip(inputs, [s for s in IDENTITY_SIZES for _ in range(2)], strict=True)
    ):
        gathered = torch.cat([r["identity"][2][i] for r in gloo_results]) / world
        assert gathered.shape[0] == sum(sizes)
        torch.testing.assert_close(gathered, tensor.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gathered_sequence_loss_equals_single_process(gloo_results: list[dict]) -> None:
    """DDP fine-tuning optimises the loss of the whole global batch, pairs across ranks' sequences included."""
    emb = _sequence_embeddings().requires_grad_(True)
    want = SequencePairLoss(0.1, 0.9)(emb, SEQ_CHARS, SEQ_GLOBAL, SEQ_SERIES)
    want.backward()
    world = len(gloo_results)
    for result in gloo_results:  # every rank computes the global loss
        assert result["sequence"][0].item() == pytest.approx(want.item(), rel=1e-12)
    grad = torch.cat([r["sequence"][1] for r in gloo_results]) / world  # what DDP's gradient average gives
    torch.testing.assert_close(grad, emb.grad, rtol=1e-10, atol=1e-13)
    # Had the ids not been made unique per rank, rank 1's sequence 2 would count as rank 0's sequence 0.
    collided = SequencePairLoss(0.1, 0.9)(emb.detach(), SEQ_CHARS, SEQ_LOCAL, SEQ_SERIES)
    assert collided.item() != pytest.approx(want.item(), rel=1e-6)
    # And each rank alone (no gather) sees a different loss: cross-rank pairs are real pairs.
    alone = SequencePairLoss(0.1, 0.9)(emb.detach()[:8], SEQ_CHARS[:8], SEQ_LOCAL[:8], SEQ_SERIES[:8])
    assert alone.item() != pytest.approx(want.item(), rel=1e-6)


def test_autocast_keeps_the_logits_in_float32() -> None:
    gen = torch.Generator().manual_seed(8)
    z_a, z_b = torch.randn(32, 64, generator=gen), torch.randn(32, 64, generator=gen)
    want = reference_ntxent(z_a.double().numpy(), z_b.double().numpy(), 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert NTXentLoss(0.07)(z_a, z_b).item() == pytest.approx(want, rel=1e-5)
        # bf16 embeddings (as a bf16 model returns) are upcast, not multiplied in bf16.
        got = NTXentLoss(0.07)(z_a.bfloat16(), z_b.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        reference_ntxent(z_a.bfloat16().double().numpy(), z_b.bfloat16().double().numpy(), 0.07), rel=1e-5
    )
