import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tga_hf.modeling import masked_mean as modeling_masked_mean
from tga_hf.training.guide_loss import guide_loss, masked_mean, pool_guide_states


def reference_guide_loss(image, caption, retrieved, has_retrieved):
    """Slow per-sample, per-layer reference in float64 Python arithmetic (the paper's formula)."""
    num_layers, batch, _ = image.shape
    total = 0.0
    for layer in range(num_layers):
        for sample in range(batch):
            i, c = image[layer, sample].double(), caption[layer, sample].double()
            cos_ic = float(i @ c / max(i.norm() * c.norm(), 1e-8))
            term = -cos_ic
            if retrieved is not None and has_retrieved[sample]:
                r = retrieved[layer, sample].double()
                cos_rc = float(r @ c / max(r.norm() * c.norm(), 1e-8))
                term += math.log1p(math.exp(-(cos_ic - cos_rc)))
            total += term
    return total / (num_layers * batch)


@settings(max_examples=40, deadline=None)
@given(
    num_layers=st.integers(1, 3),
    batch=st.integers(1, 4),
    hidden=st.integers(2, 16),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    with_retrieved=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_guide_loss_matches_per_sample_reference(num_layers, batch, hidden, dtype, with_retrieved, seed, data):
    generator = torch.Generator().manual_seed(seed)
    image, caption, retrieved = (torch.randn(num_layers, batch, hidden, generator=generator).to(dtype) for _ in "icr")
    has_retrieved = torch.tensor(data.draw(st.lists(st.booleans(), min_size=batch, max_size=batch)))
    out = guide_loss(image, caption, retrieved if with_retrieved else None, has_retrieved if with_retrieved else None)
    expected = reference_guide_loss(image, caption, retrieved if with_retrieved else None, has_retrieved)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)
    assert out.cos_image_caption.shape == (num_layers,)
    if with_retrieved and has_retrieved.any():
        assert out.cos_retrieved_caption.shape == (num_layers,)
    else:
        assert out.cos_retrieved_caption is None


def test_pooled_guide_loss_matches_reference_over_masks():
    torch.manual_seed(0)
    hidden = {layer: torch.randn(3, 7, 5, dtype=torch.bfloat16) for layer in (1, 2)}
    image_mask = torch.tensor([[1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    caption_mask = torch.roll(image_mask, 2, dims=1)
    retrieved_mask = torch.zeros_like(image_mask)
    retrieved_mask[0, 5:] = True  # samples 1 and 2 have no retrieved text
    image, caption, retrieved = (
        pool_guide_states(hidden, [1, 2], m) for m in (image_mask, caption_mask, retrieved_mask)
    )
    out = guide_loss(image, caption, retrieved, retrieved_mask.any(dim=1))

    # the reference pools each sample by hand (an empty span pools to zeros, as masked_mean does)
    def pool(mask):
        return torch.stack(
            [
                torch.stack(
                    [hidden[layer][b][mask[b]].double().mean(0) if mask[b].any() else torch.zeros(5) for b in range(3)]
                )
                for layer in (1, 2)
            ]
        )

    expected = reference_guide_loss(pool(image_mask), pool(caption_mask), pool(retrieved_mask), [True, False, False])
    assert out.loss.item() == pytest.approx(expected, abs=1e-5)


def test_guide_loss_is_differentiable_and_stable():
    image = torch.randn(2, 3, 8, requires_grad=True)
    caption = torch.randn(2, 3, 8)
    retrieved = torch.randn(2, 3, 8, requires_grad=True)
    out = guide_loss(image * 1e4, caption, retrieved * 1e4)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert image.grad.abs().sum() > 0 and retrieved.grad.abs().sum() > 0
    # identical image and caption states give cos 1: -1 + softplus(-(1 - cos(R, C)))
    same = guide_loss(caption, caption, -caption)
    assert same.loss.item() == pytest.approx(-1 + math.log1p(math.exp(-2)), abs=1e-6)


def test_guide_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="num_layers, B, H"):
        guide_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), None)
    with pytest.raises(ValueError, match="retrieved_states"):
        guide_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="has_retrieved"):
        guide_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="not captured"):
        pool_guide_states((torch.zeros(1, 2, 3), None), [1], torch.ones(1, 2, dtype=torch.bool))


def test_masked_mean_is_the_modeling_one():
    assert masked_mean is modeling_masked_mean


def reference_content_guide_loss(image, caption, retrieved, has_retrieved, objective, temperature):
    """float64 per-sample reference of the content-aware objectives ("centered", "contrastive")."""
    num_layers, batch, _ = image.shape
    image, caption = image.double(), caption.double()
    retrieved = None if retrieved is None else retrieved.double()

    def cos(a, b):
        return float(a @ b / max(a.norm() * b.norm(), 1e-8))

    total = 0.0
    for layer in range(num_layers):
        i_all, c_all = image[layer], caption[layer]
        r_all = None if retrieved is None else retrieved[layer]
        if objective == "centered":
            common = c_all.mean(dim=0)
            i_all, c_all = i_all - common, c_all - common
            r_all = None if r_all is None else r_all - common
        for sample in range(batch):
            cos_ic = cos(i_all[sample], c_all[sample])
            if objective == "contrastive":
                logits = [cos(i_all[sample], c_all[other]) / temperature for other in range(batch)]
                term = -(logits[sample] - math.log(sum(math.exp(x) for x in logits)))
            else:
                term = -cos_ic
            if r_all is not None and has_retrieved[sample]:
                term += math.log1p(math.exp(-(cos_ic - cos(r_all[sample], c_all[sample]))))
            total += term
    return total / (num_layers * batch)


@settings(max_examples=30, deadline=None)
@given(
    objective=st.sampled_from(["centered", "contrastive"]),
    num_layers=st.integers(1, 3),
    batch=st.integers(2, 5),
    hidden=st.integers(2, 12),
    with_retrieved=st.booleans(),
    temperature=st.sampled_from([0.05, 0.1, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_content_objectives_match_float64_reference(
    objective, num_layers, batch, hidden, with_retrieved, temperature, seed
):
    generator = torch.Generator().manual_seed(seed)
    # A large shared component, as real hidden states have: the case the content-aware objectives exist for.
    common = 6 * torch.randn(hidden, generator=generator)
    image, caption, retrieved = (common + torch.randn(num_layers, batch, hidden, generator=generator) for _ in "icr")
    has_retrieved = torch.arange(batch) % 2 == 0
    out = guide_loss(
        image,
        caption,
        retrieved if with_retrieved else None,
        has_retrieved if with_retrieved else None,
        objective=objective,
        temperature=temperature,
    )
    expected = reference_content_guide_loss(
        image, caption, retrieved if with_retrieved else None, has_retrieved, objective, temperature
    )
    assert out.loss.item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    # The logged cosine stays the raw cos(I, C) whatever the objective.
    raw = torch.nn.functional.cosine_similarity(image, caption, dim=-1).mean(dim=1)
    torch.testing.assert_close(out.cos_image_caption, raw)


def test_content_objectives_prefer_the_own_caption_where_the_paper_loss_cannot_tell():
    # Captions share a dominant direction (norm 10 vs 1 of content). Pairing each image with the OTHER caption
    # costs the paper loss 0.01; the content-aware losses charge clearly more for it.
    common = torch.tensor([10.0, 0, 0])
    captions = torch.stack([common + torch.tensor([0, 1.0, 0]), common + torch.tensor([0, 0, 1.0])]).unsqueeze(0)

    def gap(objective):
        swapped = guide_loss(captions.flip(1), captions, None, objective=objective).loss
        return (swapped - guide_loss(captions, captions, None, objective=objective).loss).item()

    assert 0 < gap("paper") < 0.02
    assert gap("centered") > 1.5  # -cos flips from -1 to +1 once the shared part is removed
    assert gap("contrastive") > 5 * gap("paper")


def test_content_objectives_reject_single_sample_batches_and_unknown_names():
    states = torch.randn(1, 1, 4)
    with pytest.raises(ValueError, match="batch size >= 2"):
        guide_loss(states, states, None, objective="contrastive")
    with pytest.raises(ValueError, match="objective must be one of"):
        guide_loss(states, states, None, objective="cosine")
