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
