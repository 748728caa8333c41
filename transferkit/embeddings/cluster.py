"""`transferkit cluster`: k-means on frozen, L2-normalised features, with zero labels.

Writes OUT/clusters.csv (item, cluster, distance to the cluster centre, label if the data has one),
a contact sheet per cluster (OUT/sheets/cluster_XX.png: thumbnails nearest the centre first, so a
person can name a cluster at a glance; `.txt` with the texts for text data) and OUT/summary.json
(sizes; with labels also purity, adjusted Rand index and normalised mutual information).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..data.feature_cache import FeatureCache
from .embed import Embeddings, compute_embeddings

WRITTEN_BY = "transferkit cluster"


def kmeans(feats: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each row, cosine distance of each row to its centre) of k-means (scikit-learn,
    k-means++ with 10 restarts) on the L2-normalised rows."""
    from sklearn.cluster import KMeans
    z = feats / np.clip(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12, None)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z.astype(np.float64))
    centres = km.cluster_centers_ / np.clip(np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-12, None)
    dist = 1.0 - (z * centres[km.labels_]).sum(1)
    return km.labels_.astype(int), dist


def agreement(labels: list[str], clusters: np.ndarray) -> dict:
    """How well clusters match known labels: purity (share of items in their cluster's majority
    label), adjusted Rand index, normalised mutual information; and each cluster's majority label."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    majority, hit = {}, 0
    for c in sorted(set(clusters.tolist())):
        members = [lab for lab, cl in zip(labels, clusters) if cl == c]
        top = max(sorted(set(members)), key=members.count)
        majority[int(c)] = top
        hit += members.count(top)
    return {"purity": hit / len(labels), "adjusted_rand": float(adjusted_rand_score(labels, clusters)),
            "nmi": float(normalized_mutual_info_score(labels, clusters)), "majority_label": majority}


def contact_sheet(paths: list[str], title: str, *, thumb: int = 96, columns: int = 6):
    """A PIL image: a title line, then the images as thumbnails in a grid (aspect kept, on white)."""
    from PIL import Image, ImageDraw

    from ..data import open_rgb
    rows = max(1, -(-len(paths) // columns))
    pad, head = 4, 24
    sheet = Image.new("RGB", (columns * (thumb + pad) + pad, head + rows * (thumb + pad) + pad), "white")
    ImageDraw.Draw(sheet).text((pad, 6), title, fill=(0, 0, 0))
    for i, p in enumerate(paths):
        im = open_rgb(p)
        im.thumbnail((thumb, thumb))
        x = pad + (i % columns) * (thumb + pad) + (thumb - im.width) // 2
        y = head + pad + (i // columns) * (thumb + pad) + (thumb - im.height) // 2
        sheet.paste(im, (x, y))
    return sheet


def _check_out(out: Path) -> dict:
    """The summary of an earlier `cluster` output in OUT ({} if OUT is new or empty); any other
    content is refused, never overwritten."""
    if not out.exists() or not any(out.iterdir()):
        return {}
    try:
        earlier = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        earlier = {}
    if earlier.get("written_by") != WRITTEN_BY:
        raise FileExistsError(f"{out} is not empty and holds no earlier 'transferkit cluster' output; "
                              "choose another --out")
    return earlier


def cluster_data(data: str | Path, backbone, k: int, out: str | Path, *, seed: int = 0,
                 image_size: int | None = None, batch_size: int = 64, cache: FeatureCache | None = None,
                 per_sheet: int = 36, thumb: int = 96, text_col: str = "text", label_col: str = "label",
                 pooling: str | None = None, max_length: int | None = None) -> dict:
    """Cluster every input of DATA into `k` groups and write OUT (see the module docstring)."""
    out = Path(out)
    earlier = _check_out(out)
    emb = compute_embeddings(data, backbone, image_size=image_size, batch_size=batch_size, cache=cache,
                             text_col=text_col, label_col=label_col, pooling=pooling, max_length=max_length,
                             seed=seed)
    if not 2 <= k <= len(emb.items):
        raise ValueError(f"--k {k}: need 2 <= k <= the number of inputs ({len(emb.items)})")
    clusters, dist = kmeans(emb.feats, k, seed)
    for rel in earlier.get("sheets", {}).values():  # the earlier run's sheets: k may have changed
        (out / rel).unlink(missing_ok=True)
    return write_clusters(emb, clusters, dist, out, data=str(data), seed=seed, per_sheet=per_sheet, thumb=thumb)


def write_clusters(emb: Embeddings, clusters: np.ndarray, dist: np.ndarray, out: Path, *, data: str,
                   seed: int, per_sheet: int, thumb: int) -> dict:
    from ..store.checkpoint import atomic_write_json, atomic_write_text
    from ..report.outputs import spreadsheet_row
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    k = int(clusters.max()) + 1
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["item", "cluster", "distance", "label"])
    w.writerows(spreadsheet_row([ex.x, int(c), round(float(d), 6), ex.label])
                for ex, c, d in zip(emb.items, clusters, dist))
    atomic_write_text(out / "clusters.csv", buf.getvalue())
    sizes, sheets = {}, {}
    for c in range(k):
        members = sorted(np.flatnonzero(clusters == c).tolist(), key=lambda i: dist[i])
        sizes[c] = len(members)
        shown = [emb.items[i].x for i in members[:per_sheet]]
        title = f"cluster {c}: {len(members)} items ({len(shown)} nearest the centre shown)"
        if emb.modality == "image":
            path = out / "sheets" / f"cluster_{c:02d}.png"
            contact_sheet(shown, title, thumb=thumb).save(path)
        else:
            path = out / "sheets" / f"cluster_{c:02d}.txt"
            atomic_write_text(path, title + "\n\n" + "\n".join(t.replace("\n", " ") for t in shown) + "\n")
        sheets[c] = str(path.relative_to(out))
    summary = {"written_by": WRITTEN_BY, "data": data, "source": emb.source, "k": k, "seed": seed,
               "n": len(emb.items), "sizes": sizes, "sheets": sheets, "skipped": emb.skipped,
               "seconds_features": emb.seconds}
    if emb.labelled:
        summary.update(agreement([ex.label for ex in emb.items], clusters))
    atomic_write_json(out / "summary.json", summary)
    return summary
