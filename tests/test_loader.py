"""Training batches through a DataLoader with workers: the same pixels, the same batches and the same
weights as in-process loading, and an exact resume in the middle of an epoch."""

import torch
from safetensors.torch import load_file
from test_engine import _assert_same_run, _train


def test_workers_train_exactly_like_the_main_process_and_resume_exactly(image_folder, tmp_path):
    plain, workers, parts = tmp_path / "plain", tmp_path / "workers", tmp_path / "parts"
    # augmentation on and head dropout: both random streams must come out the same
    assert _train(image_folder, plain, "--head-dropout", "0.5", steps=5) == 0
    assert _train(image_folder, workers, "--head-dropout", "0.5", "--num-workers", "2", steps=5) == 0
    a, b = load_file(str(plain / "last" / "model.safetensors")), load_file(str(workers / "last" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # 3 steps per epoch: stopping at step 4 resumes the loader at the second batch of epoch 1
    assert _train(image_folder, parts, "--head-dropout", "0.5", "--num-workers", "2", "--stop-after", "4",
                  steps=5) == 0
    from transferkit.cli import main
    assert main(["train", "--resume", str(parts), "--quiet"]) == 0
    _assert_same_run(workers, parts)


def test_the_batch_maker_pickles_for_spawned_workers(image_folder):
    # macOS and Windows start DataLoader workers by spawn, which pickles collate_fn: a lambda fails there
    import pickle

    from transferkit.data import load_task
    from transferkit.engine.batches import _Collate, collate_items
    from transferkit.infer.loaders import collate_for, make_dataset
    from transferkit.models import attach_head, load_backbone
    task = load_task(image_folder, val_fraction=0.0)
    model = attach_head(load_backbone("timm:test_resnet@random"), task.classes)
    ds = make_dataset(model, task.train[:4], train=True, augment=True, image_size=32, seed=0)
    collate = pickle.loads(pickle.dumps(_Collate(collate_for(model))))
    x, y = collate([ds[(i, 0)] for i in range(4)])
    x0, y0 = collate_items([ds[(i, 0)] for i in range(4)], model)
    assert x.shape == (4, 3, 32, 32) and torch.equal(x, x0) and torch.equal(y, y0)


def test_evaluation_loaders_leave_the_global_random_stream_alone(image_folder):
    # a warm feature cache skips these loaders; if they drew from the global RNG, dropout after a
    # cached head phase would differ from dropout after an uncached one
    from transferkit.data import load_task
    from transferkit.infer.loaders import eval_loader, make_dataset
    from transferkit.models import attach_head, load_backbone
    task = load_task(image_folder, val_fraction=0.0)
    model = attach_head(load_backbone("timm:test_resnet@random"), task.classes)
    loader = eval_loader(model, make_dataset(model, task.train[:4], train=False, augment=False, image_size=32,
                                             seed=0), 2)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    assert len(list(loader)) == 2
    assert torch.equal(torch.get_rng_state(), before)
