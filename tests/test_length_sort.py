"""Text inference in batches of similar length (transferkit/infer/length_sort.py)."""

import torch

from transferkit.data.splits import Example
from transferkit.models.heads import attach_head


def test_text_batches_of_similar_length_give_the_same_outputs_in_order(tiny_bert_dir):
    """Texts scored sorted by length (less padding) come back in the data set's order with the
    values of the unsorted batches."""
    from transferkit.infer.loaders import eval_loader, make_dataset
    from transferkit.infer.predict import predict_probs
    from transferkit.infer.length_sort import by_length
    from transferkit.models import load_backbone
    bb = load_backbone(f"hf:{tiny_bert_dir}")
    model = attach_head(bb, ["a", "b"]).eval()
    words = "good bad movie film story plot music song happy sad".split()
    items = [Example(" ".join(words[:1 + (7 * i) % 10] * (1 + i % 3)), "ab"[i % 2]) for i in range(13)]
    loader = eval_loader(model, make_dataset(model, items, train=False, augment=False, image_size=None,
                                             seed=0), 4)
    sorted_loader, order = by_length(loader)
    pads = [sum(int((x["attention_mask"] == 0).sum()) for x, _ in ld) for ld in (loader, sorted_loader)]
    assert pads[1] < pads[0]  # what the sorting is for
    probs, y = predict_probs(model, loader, "cpu")
    by_hand = [model({k: v for k, v in loader.collate_fn([(e.x, 0)])[0].items()}).softmax(-1)[0]
               for e in items]
    torch.testing.assert_close(torch.from_numpy(probs), torch.stack(by_hand).detach(), rtol=0, atol=1e-5)
    assert y.tolist() == [i % 2 for i in range(13)]
