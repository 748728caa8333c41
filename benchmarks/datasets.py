"""Data sets the few-shot benchmarks build offline from what pip and Debian packages ship.

- `clipart`: the demo set (Debian openclipart-png, 10 topics, 613 images; transferkit/demo_data).
- `digits`: scikit-learn's bundled handwritten digits (`load_digits`: 1,797 images of 8x8 pixels,
  10 classes), written as 32x32 grayscale-as-RGB PNGs — pictures of a very different look from the
  ImageNet photos the backbone learned from.
- `textures`: material classification from the photographic game textures of OpenArena 0.8.1 (Debian
  openarena-081-textures, GPL-2+: /usr/share/doc/openarena-081-textures/copyright; the JPEG/TGA files
  inside /usr/share/games/openarena/baseoa/pak4-textures.pk3, read in place): 7 material families
  (brick, concrete, metal, rock, rust, soil, wood), each made of 5-8 distinct source textures, 80 seeded
  random crops per family (a quarter to a half of the texture, flipped and turned, 96x96 PNG) — close-up
  surfaces, far from ImageNet's object photos. Skipped, with a message, when the package is missing.
- `animals`: Animal-MNIST (PyPI `animal-mnist` 0.4, MIT: 10 animals, 1,000 white-on-black silhouettes of
  28x28 pixels each, read from the package's own files; install with `pip install --no-deps
  animal-mnist==0.4`, its TensorFlow requirement is for loaders not used here): exact duplicates
  dropped (284 of 10,000), then 300 per class in a seeded order, written as 32x32 grayscale-as-RGB
  PNGs — shapes with no texture or colour, the set with room for 100 labels per class. Skipped, with
  a message, when the package is missing.
- `text`: the demo text set (Debian package descriptions -> section, 10 sections x 200).
"""

from __future__ import annotations

import io
import pickle
import random
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLIPART = ROOT / "transferkit" / "demo_data" / "clipart"
TEXT = ROOT / "transferkit" / "demo_data" / "debian_descriptions.csv"
PK3 = Path("/usr/share/games/openarena/baseoa/pak4-textures.pk3")
PK3_LICENCE = "openarena-081-textures, GPL-2+ (/usr/share/doc/openarena-081-textures/copyright)"
# material family -> its source textures inside the pk3, picked by the keywords in their paths and then
# checked by eye (names mislead: stone/pjrock6 is grass, gothic_floor/q1metal7_97 is stone blocks; both left
# out, as are painted or near-duplicate variants such as rock02/rock06 and the 64-px oquartz tiles)
TEXTURE_FAMILIES = {
    "brick": ("cosmo_block/ancient_bricks2.jpg", "cosmo_wall/brickwall1.tga", "cosmo_wall/brickwall2.tga",
              "e7/e7bricks01.jpg", "gothic_wall/streetbricks.jpg", "gothic_wall/streetbricks14.jpg",
              "evil4_walls/drk_brnbrick.jpg"),
    "concrete": ("proto2/concrete01dark.jpg", "proto2/concrete02.jpg", "proto2/concrete03.jpg",
                 "base_wall/concrete.jpg", "base_wall/concrete_dark.jpg", "base_floor/concrete.jpg",
                 "evil1_walls/cementwall.jpg"),
    "metal": ("clown/steel_b.jpg", "clown/steel_r.jpg", "base_wall/shinybluemetal1.jpg", "base_wall/bluemetal2.jpg",
              "base_floor/diamond2.jpg", "base_floor/clang_floor.jpg", "base_floor/metalbridge06.jpg"),
    "rock": ("cosmo_block/rock01.jpg", "cosmo_block/rock05.tga", "stone/pjrock1.jpg", "stone/pjrock16.jpg",
             "stone/pjrock21.jpg", "organics/pjrock7d.jpg"),
    "rust": ("acc_dm5/rust.jpg", "base_wall/rusted.jpg", "base_trim/deeprust.jpg", "gothic_trim/pitted_rust.jpg",
             "gothic_trim/pitted_rust2.jpg", "gothic_trim/pitted_rust3.jpg", "clown/steel_rust.jpg"),
    "soil": ("acc_dm5/sand.jpg", "acc_dm5/mud02.jpg", "cosmo_floor/sand02.jpg", "nki/nki_sand2.tga",
             "organics/dirt2.jpg", "base_floor/dirt.jpg", "acc_dm3/sp_ground.jpg", "nki/nki_ground1.tga"),
    "wood": ("acc_dm5/wood01.jpg", "e7/e7panelwood.jpg", "gothic_ceiling/woodceiling1a.jpg", "gothic_trim/wood2.jpg",
             "evil2_misc/crate_drtyow.jpg"),
}


def digits_folder(root: str | Path, size: int = 32) -> Path:
    """Write load_digits as DATA/<digit>/<index>.png (idempotent) and return the folder."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    done = root / ".complete"
    if done.exists():
        return root
    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        px = (np.asarray(img) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        out = root / str(label)
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px, "L").resize((size, size), Image.BILINEAR).convert("RGB").save(out / f"{i:04d}.png")
    done.write_text("ok\n")
    return root


def textures_folder(root: str | Path, per_class: int = 80, size: int = 96, seed: int = 0,
                    pk3: str | Path = PK3) -> Path | None:
    """Write DATA/<family>/<source>_<n>.png from the OpenArena textures (idempotent: a `.complete` marker;
    deterministic for a seed) and return the folder, or None, with a message on stderr, when the pk3 (or a
    texture in it) is missing.

    Each source texture is first brought to 256x256 (they are tiles of 128-1024 px: one scale for all),
    then each crop is a square of 64-128 px of it at a random position (wrapping round: the textures
    tile), mirrored and turned at random, resized to `size`. A family's crops go round its sources in
    turn (5-8 sources: 10-16 crops each). The folder is one pool: the benchmarks split test from it at
    random, so a test crop's source texture is usually among the training crops' (never the same
    pixels); with 5 labels a class, some test crops come from textures no training label was cut from.
    `.sources.txt` lists the sources and their licence."""
    from PIL import Image

    root = Path(root)
    done = root / ".complete"
    if done.exists():
        return root
    pk3 = Path(pk3)
    if not pk3.is_file():
        print(f"textures: skipped: {pk3} not found (Debian package openarena-081-textures)", file=sys.stderr)
        return None
    with zipfile.ZipFile(pk3) as z:
        have = set(z.namelist())
        missing = [n for names in TEXTURE_FAMILIES.values() for n in names if f"textures/{n}" not in have]
        if missing:
            print(f"textures: skipped: {pk3} lacks {', '.join(missing)}", file=sys.stderr)
            return None
        tiles = {}
        for names in TEXTURE_FAMILIES.values():
            for n in names:
                with Image.open(io.BytesIO(z.read(f"textures/{n}"))) as im:
                    tile = im.convert("RGB").resize((256, 256), Image.BICUBIC)
                tiles[n] = Image.new("RGB", (512, 512))
                for dx in (0, 256):
                    for dy in (0, 256):
                        tiles[n].paste(tile, (dx, dy))
    for family, names in TEXTURE_FAMILIES.items():
        rng = random.Random(f"{seed}:{family}")
        out = root / family
        out.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            n = names[i % len(names)]
            side = rng.randint(64, 128)
            x, y = rng.randrange(256), rng.randrange(256)
            img = tiles[n].crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            turn = rng.randrange(4)
            if turn:
                img = img.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[turn - 1])
            stem = n.rsplit(".", 1)[0].replace("/", "-")
            img.save(out / f"{stem}_{i // len(names):02d}.png")
    (root / ".sources.txt").write_text(
        f"Crops of textures in {pk3.name}, from {PK3_LICENCE}\n"
        + "".join(f"{family}: {', '.join(names)}\n" for family, names in TEXTURE_FAMILIES.items()))
    done.write_text("ok\n")
    return root


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (a data file is not a reason to run code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name}: not a numpy array")
        return super().find_class(module, name)


def animals_folder(root: str | Path, per_class: int = 300, size: int = 32, seed: int = 0) -> Path | None:
    """Write Animal-MNIST as DATA/<animal>/<index>.png (idempotent: a `.complete` marker; deterministic
    for a seed) and return the folder, or None, with a message on stderr, without the package."""
    import gzip
    import hashlib
    import importlib.util

    from PIL import Image

    root = Path(root)
    done = root / ".complete"
    if done.exists():
        return root
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        print("animals: skipped: the package animal-mnist is not installed "
              "(pip install --no-deps animal-mnist==0.4)", file=sys.stderr)
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        images = np.asarray(_ArraysOnly(f).load())
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        labels = np.asarray(_ArraysOnly(f).load())
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        print(f"animals: skipped: {folder} holds {images.shape} images, {labels.shape} labels", file=sys.stderr)
        return None
    seen, keep = set(), []
    for i, img in enumerate(images):  # an image and its exact copy must not land in train and test
        h = hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()
        if h not in seen:
            seen.add(h)
            keep.append(i)
    order = np.random.default_rng(seed).permutation(np.asarray(keep))
    for c, name in enumerate(ANIMALS):
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        for i in [i for i in order if labels[i] == c][:per_class]:
            Image.fromarray(images[i].astype(np.uint8), "L").resize((size, size), Image.BILINEAR) \
                .convert("RGB").save(out / f"{i:05d}.png")
    done.write_text("ok\n")
    return root


# Animal-MNIST's label order (its README)
ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
IMAGE_SETS = ("clipart", "digits", "textures", "animals")


def image_datasets(tmp: str | Path, names: tuple[str, ...] | list[str] = IMAGE_SETS) -> dict[str, Path]:
    """The image sets by name, built under `tmp` (only those in `names`); a set that cannot be built here
    (textures without its Debian package, animals without its pip package) is left out, with a message on stderr."""
    builders = {"clipart": lambda: CLIPART, "digits": lambda: digits_folder(Path(tmp) / "digits"),
                "textures": lambda: textures_folder(Path(tmp) / "textures"),
                "animals": lambda: animals_folder(Path(tmp) / "animals")}
    sets = {name: builders[name]() for name in IMAGE_SETS if name in names}
    return {name: path for name, path in sets.items() if path is not None}
