"""The world codec's training loss: what each recipe field asks for."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from world.autoencoder import reconstruction_loss


def test_object_weight_counts_an_error_on_an_object_that_much_more_than_the_same_error_beside_it() -> None:
    x = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:4, 2:4] = 1
    on_object, beside = x.clone(), x.clone()
    on_object[:, :, 2, 2] += 0.3
    beside[:, :, 6, 6] += 0.3
    ratio = reconstruction_loss(on_object, x, mask, 4.0) / reconstruction_loss(beside, x, mask, 4.0)
    assert abs(float(ratio) - 4.0) < 1e-4
    # Weight 1 is the plain mean (the first world's loss, computed as it always was).
    assert torch.equal(reconstruction_loss(on_object, x, mask, 1.0), F.l1_loss(on_object, x) + F.mse_loss(on_object, x))
    # A weight that is the same everywhere changes nothing.
    everywhere = torch.ones_like(mask)
    assert torch.allclose(reconstruction_loss(on_object, x, everywhere, 4.0), reconstruction_loss(on_object, x, mask, 1.0))
