"""Shared fixtures. Nothing here (or in any test) may reach the network: the hub is switched off for
the whole session before transformers / huggingface_hub are imported by the tests."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Tiny models gain nothing from intra-op threads, and on a shared CPU the thread pool's contention
# makes a training step ~10x slower; one thread keeps the suite fast and its timings stable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The feature cache is on by default; tests must never write into the user's ~/.cache.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["TRANSFERKIT_CACHE"] = tempfile.mkdtemp(prefix="transferkit-test-cache-")
atexit.register(shutil.rmtree, os.environ["TRANSFERKIT_CACHE"], True)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)

# Three classes told apart by their mean colour; per-pixel noise keeps them from being trivial copies.
COLOURS = {"blue": (40, 60, 200), "green": (50, 190, 60), "red": (210, 50, 40)}
PER_CLASS = 12
IMAGE_SIZE = 32


def write_image_folder(root: Path, per_class: int = PER_CLASS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            noise = rng.normal(0.0, 25.0, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
            px = np.clip(np.array(rgb, dtype=float) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(px, "RGB").save(d / f"{name}_{i:02d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """DATA/<class>/<image>.png: 3 colour classes x 12 images of 32x32, seeded."""
    return write_image_folder(tmp_path / "images")


WORDS = ("the a an and or of to in on for with is are was be this that it as at by from not but "
         "good bad great poor fine awful nice movie film book story plot actor music song sound "
         "love hate like enjoy boring fun slow fast long short happy sad funny dull bright dark "
         "cat dog bird fish tree house car road city river sea sky sun moon star rain snow wind "
         "red green blue black white big small old new hot cold one two three four five six").split()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (hidden 32, 2 layers, 2 heads) with a WordPiece tokenizer, saved with
    `save_pretrained` so that `hf:<dir>` loads it offline."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(WORDS))
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab_file = d / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=64)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d
