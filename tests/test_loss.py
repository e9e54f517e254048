"""ClipLoss: against a reference written with explicit loops, and across 2 gloo processes."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from openwit.model.loss import ClipLoss  # noqa: E402

GLOBAL_BATCH = 8
WORLD_SIZE = 2


def reference_loss(image_features, text_features, logit_scale):
    """Mean over pairs of the two cross-entropies, row by row and column by column."""
    n = image_features.shape[0]
    total = 0.0
    for i in range(n):
        image_row = torch.stack([logit_scale * image_features[i] @ text_features[j] for j in range(n)])
        text_row = torch.stack([logit_scale * text_features[i] @ image_features[j] for j in range(n)])
        total = total - torch.log_softmax(image_row, dim=0)[i] - torch.log_softmax(text_row, dim=0)[i]
    return total / (2 * n)


def random_features(rows, dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=-1)
    return images, texts


def test_matches_reference():
    images, texts = random_features(6)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    loss = ClipLoss()(images, texts, scale)
    torch.testing.assert_close(loss, reference_loss(images, texts, scale))


def test_gradients_match_reference():
    images, texts = random_features(5)
    scale = torch.tensor(14.0, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (images, texts, scale)]
    ClipLoss()(*leaves).backward()
    reference_leaves = [t.clone().requires_grad_() for t in (images, texts, scale)]
    reference_loss(*reference_leaves).backward()
    for leaf, reference in zip(leaves, reference_leaves):
        torch.testing.assert_close(leaf.grad, reference.grad)


def test_perfect_alignment_gives_low_loss():
    features = torch.eye(8)  # orthogonal unit vectors, each pair identical
    aligned = ClipLoss()(features, features.clone(), torch.tensor(100.0))
    shuffled = ClipLoss()(features, features.roll(1, dims=0), torch.tensor(100.0))
    assert aligned.item() < 1e-6
    assert shuffled.item() > 50
    # With random features the loss is near log(N): chance.
    images, texts = random_features(64, dim=512)
    assert abs(ClipLoss()(images, texts, torch.tensor(1.0)).item() - math.log(64)) < 0.1


def test_labels_are_cached_per_shape():
    loss = ClipLoss()
    assert loss.labels(4, 0, torch.device("cpu")) is loss.labels(4, 0, torch.device("cpu"))
    assert loss.labels(4, 4, torch.device("cpu")).tolist() == [4, 5, 6, 7]
    assert ClipLoss(cache_labels=False).labels(4, 0, torch.device("cpu")) is not None


# ---- two processes -----------------------------------------------------------------------


def toy_problem():
    """A global batch and a two-matrix 'encoder': the same on every rank (fixed seed)."""
    generator = torch.Generator().manual_seed(1234)
    image_inputs = torch.randn(GLOBAL_BATCH, 12, generator=generator, dtype=torch.float64)
    text_inputs = torch.randn(GLOBAL_BATCH, 10, generator=generator, dtype=torch.float64)
    image_proj = torch.randn(12, 6, generator=generator, dtype=torch.float64).requires_grad_()
    text_proj = torch.randn(10, 6, generator=generator, dtype=torch.float64).requires_grad_()
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    return image_inputs, text_inputs, [image_proj, text_proj, log_scale]


def run_step(image_inputs, text_inputs, params, loss_fn):
    image_proj, text_proj, log_scale = params
    image_features = F.normalize(image_inputs @ image_proj, dim=-1)
    text_features = F.normalize(text_inputs @ text_proj, dim=-1)
    image_features.retain_grad()
    text_features.retain_grad()
    loss = loss_fn(image_features, text_features, log_scale.exp())
    loss.backward()
    return loss.detach(), image_features.grad, text_features.grad


def distributed_worker(rank, init_file, results_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        rows = GLOBAL_BATCH // WORLD_SIZE
        part = slice(rank * rows, (rank + 1) * rows)
        for local_loss in (False, True):
            image_inputs, text_inputs, params = toy_problem()
            loss, image_grad, text_grad = run_step(
                image_inputs[part], text_inputs[part], params, ClipLoss(local_loss=local_loss)
            )
            for param in params:  # what DDP does: the mean of the gradients over ranks
                dist.all_reduce(param.grad)
                param.grad /= WORLD_SIZE
            results[local_loss] = {
                "loss": loss,
                "image_grad": image_grad,
                "text_grad": text_grad,
                "param_grads": [param.grad for param in params],
            }
        torch.save(results, f"{results_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    mp.spawn(distributed_worker, args=(str(tmp_path / "init"), str(tmp_path / "results")), nprocs=WORLD_SIZE)
    per_rank = [torch.load(tmp_path / f"results.{rank}") for rank in range(WORLD_SIZE)]

    image_inputs, text_inputs, params = toy_problem()
    loss, image_grad, text_grad = run_step(image_inputs, text_inputs, params, ClipLoss())
    rows = GLOBAL_BATCH // WORLD_SIZE
    for local_loss in (False, True):
        results = [ranked[local_loss] for ranked in per_rank]
        if local_loss:  # each rank's loss covers its own rows; their mean is the global loss
            torch.testing.assert_close(sum(r["loss"] for r in results) / WORLD_SIZE, loss)
        else:  # every rank computes the global loss itself
            for r in results:
                torch.testing.assert_close(r["loss"], loss)
        for rank, r in enumerate(results):
            part = slice(rank * rows, (rank + 1) * rows)
            # The documented convention: local features get W x the global-loss gradient ...
            torch.testing.assert_close(r["image_grad"], WORLD_SIZE * image_grad[part])
            torch.testing.assert_close(r["text_grad"], WORLD_SIZE * text_grad[part])
            # ... so that after DDP's mean every parameter has the one-process gradient.
            for got, expected in zip(r["param_grads"], [param.grad for param in params]):
                torch.testing.assert_close(got, expected)
