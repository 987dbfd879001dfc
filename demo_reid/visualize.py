"""Pictures of an evaluation: rank lists, ATMoE expert weights, and a 2-D map of the features.

Pure drawing functions (no model, no dataset): callers pass images, weights and features.
Matplotlib is used through its object API with the Agg canvas, so importing this module never
changes the global backend, and figure sizes in pixels are exactly ``figsize * dpi``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_EXPERT_NAMES = ("R", "N", "T", "RN", "RT", "NT", "RNT")
MODALITY_LABELS = ("RGB", "NIR", "TIR")

# Rank-list layout, in pixels (tests derive the expected picture size from these).
BORDER = 4  # coloured frame around every image
LABEL_WIDTH = 40  # left column with the modality names
HEADER_HEIGHT = 16  # text line above each query block
QUERY_GAP = 12  # space between the query column and the ranked gallery
BLOCK_GAP = 8  # space between query blocks
_COLORS = {"query": (60, 60, 60), "correct": (30, 170, 60), "wrong": (220, 40, 40), "background": (255, 255, 255)}


def rank_list_size(num_queries: int, topk: int, cell_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in pixels of :func:`draw_rank_lists`' picture."""
    cell_h, cell_w = cell_size
    tile_w, tile_h = cell_w + 2 * BORDER, cell_h + 2 * BORDER
    width = LABEL_WIDTH + tile_w * (1 + topk) + QUERY_GAP
    block_h = HEADER_HEIGHT + 3 * tile_h
    return width, num_queries * block_h + (num_queries - 1) * BLOCK_GAP


def _tile(image: Image.Image, cell_size: tuple[int, int], color) -> Image.Image:
    cell_h, cell_w = cell_size
    tile = Image.new("RGB", (cell_w + 2 * BORDER, cell_h + 2 * BORDER), color)
    tile.paste(image.convert("RGB").resize((cell_w, cell_h), Image.BILINEAR), (BORDER, BORDER))
    return tile


def draw_rank_lists(
    query_triples: Sequence[Sequence[Image.Image]],
    gallery_triples: Sequence[Sequence[Sequence[Image.Image]]],
    correct: np.ndarray,
    path: str | Path,
    captions: Optional[Sequence[str]] = None,
    cell_size: tuple[int, int] = (96, 48),
) -> Path:
    """One block per query: its RGB/NIR/TIR column, then the top-k gallery triples, framed
    green (same identity) or red (other identity), as in the original's rank-list figure.

    ``gallery_triples[q][k]`` is the (rgb, nir, tir) of query q's k-th ranked gallery entry and
    ``correct[q, k]`` whether it is a true match. ``cell_size`` is (height, width) per image.
    """
    correct = np.asarray(correct, dtype=bool)
    num_q = len(query_triples)
    if num_q == 0:
        raise ValueError("draw_rank_lists needs at least one query")
    topk = correct.shape[1]
    if correct.shape[0] != num_q or any(len(g) != topk for g in gallery_triples):
        raise ValueError(f"correct has shape {correct.shape} but got {num_q} queries with "
                         f"{[len(g) for g in gallery_triples]} gallery entries")
    width, height = rank_list_size(num_q, topk, cell_size)
    canvas = Image.new("RGB", (width, height), _COLORS["background"])
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    tile_w, tile_h = cell_size[1] + 2 * BORDER, cell_size[0] + 2 * BORDER
    block_h = HEADER_HEIGHT + 3 * tile_h
    for q in range(num_q):
        top = q * (block_h + BLOCK_GAP)
        caption = captions[q] if captions is not None else f"query {q}"
        header = f"{caption}   ->   top-{topk} gallery (green = same identity, red = other)"
        draw.text((LABEL_WIDTH, top + 2), header, fill=(0, 0, 0), font=font)
        for m in range(3):
            y = top + HEADER_HEIGHT + m * tile_h
            draw.text((4, y + tile_h // 2 - 6), MODALITY_LABELS[m], fill=(0, 0, 0), font=font)
            canvas.paste(_tile(query_triples[q][m], cell_size, _COLORS["query"]), (LABEL_WIDTH, y))
            for k in range(topk):
                color = _COLORS["correct"] if correct[q, k] else _COLORS["wrong"]
                x = LABEL_WIDTH + tile_w * (1 + k) + QUERY_GAP
                canvas.paste(_tile(gallery_triples[q][k][m], cell_size, color), (x, y))
    path = Path(path)
    canvas.save(path, format="PNG")
    return path


def _figure(figsize: tuple[float, float], dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _expert_colors(num: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(num)]


def _stacked_bars(ax, weights: np.ndarray, expert_names: Sequence[str]) -> None:
    bottom = np.zeros(len(weights))
    for e, (name, color) in enumerate(zip(expert_names, _expert_colors(len(expert_names)))):
        ax.bar(np.arange(len(weights)), weights[:, e], bottom=bottom, color=color, label=name, width=0.8)
        bottom += weights[:, e]
    ax.set_ylim(0, max(1.0, float(bottom.max()) if len(bottom) else 1.0))
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="expert", fontsize=8)


def plot_expert_weights(
    weights,
    path: str | Path,
    labels: Optional[Sequence[str]] = None,
    expert_names: Sequence[str] = DEFAULT_EXPERT_NAMES,
    figsize: tuple[float, float] = (10, 4),
    dpi: int = 100,
    xlabel: str = "query",
) -> Path:
    """Paper Fig. 6: one stacked bar per query over the 7 experts.

    ``weights`` is (N, heads, experts) as the model returns it (averaged over heads here) or (N, experts).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 3:
        w = w.mean(axis=1)
    if w.ndim != 2 or w.shape[1] != len(expert_names):
        raise ValueError(f"weights must be (N, heads, {len(expert_names)}) or (N, {len(expert_names)}), got {np.shape(weights)}")
    fig = _figure(figsize, dpi)
    ax = fig.add_axes((0.07, 0.2, 0.8, 0.7))
    _stacked_bars(ax, w, expert_names)
    ax.set_xticks(np.arange(len(w)))
    ax.set_xticklabels(labels if labels is not None else [str(i) for i in range(len(w))], rotation=90, fontsize=7)
    ax.set_ylabel("expert weight (mean over heads)")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title("ATMoE expert weights per query")
    path = Path(path)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def plot_expert_weights_by_setting(
    mean_weights: dict,
    path: str | Path,
    expert_names: Sequence[str] = DEFAULT_EXPERT_NAMES,
    figsize: tuple[float, float] = (8, 4),
    dpi: int = 100,
) -> Path:
    """Mean expert weight under each missing-modality setting: one stacked bar per setting.

    ``mean_weights`` maps a setting label (e.g. "Full", "M (RGB)") to a vector of expert weights.
    """
    if not mean_weights:
        raise ValueError("mean_weights is empty: pass at least one setting")
    names = list(mean_weights)
    w = np.stack([np.asarray(mean_weights[n], dtype=np.float64).reshape(-1) for n in names])
    if w.shape[1] != len(expert_names):
        raise ValueError(f"each setting needs {len(expert_names)} expert weights, got {w.shape[1]}")
    fig = _figure(figsize, dpi)
    ax = fig.add_axes((0.09, 0.22, 0.74, 0.68))
    _stacked_bars(ax, w, expert_names)
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean expert weight")
    ax.set_title("ATMoE expert weights under missing modalities")
    path = Path(path)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def pca_2d(features) -> np.ndarray:
    """Project features (L2-normalised first, as retrieval sees them) on their first two principal axes."""
    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([x @ vt[:1].T, np.zeros(len(x))])


def plot_feature_scatter(
    features,
    pids,
    path: str | Path,
    is_query=None,
    max_identities: int = 20,
    figsize: tuple[float, float] = (6, 6),
    dpi: int = 100,
    title: str = "retrieval features (PCA), coloured by identity",
) -> Path:
    """Paper Fig. 4 style map: 2-D PCA of the features, one colour per identity (first ``max_identities``);
    queries drawn as crosses, gallery entries as dots."""
    from matplotlib import colormaps

    feats = np.asarray(features)
    pids = np.asarray(pids)
    if len(feats) != len(pids) or len(feats) < 2:
        raise ValueError(f"need at least 2 features with one pid each, got {len(feats)} features and {len(pids)} pids")
    keep_ids = list(dict.fromkeys(pids.tolist()))[:max_identities]
    mask = np.isin(pids, keep_ids)
    xy = pca_2d(feats[mask])
    pids_kept = pids[mask]
    query = np.zeros(len(pids), dtype=bool) if is_query is None else np.asarray(is_query, dtype=bool)
    query = query[mask]
    cmap = colormaps["tab10" if len(keep_ids) <= 10 else "tab20"]
    fig = _figure(figsize, dpi)
    ax = fig.add_axes((0.15, 0.1, 0.8, 0.82))
    for n, pid in enumerate(keep_ids):
        sel = pids_kept == pid
        color = cmap(n % cmap.N)
        ax.scatter(xy[sel & ~query, 0], xy[sel & ~query, 1], s=18, color=color, marker="o")
        ax.scatter(xy[sel & query, 0], xy[sel & query, 1], s=30, color=color, marker="x")
    ax.set_title(title + ("  (x = query, o = gallery)" if query.any() else ""), fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    path = Path(path)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def rank_list_for_queries(
    query_features,
    gallery_features,
    q_pids,
    g_pids,
    q_groups,
    g_groups,
    num_queries: int = 4,
    topk: int = 10,
    distance: str = "euclidean",
):
    """Pick ``num_queries`` queries spread over the query set (only those with a true match) and
    return ``(query_indices, ranked_gallery_indices (N, k), correct (N, k))``.

    Junk entries (same identity and same camera/scene group) are left out, as in the metric.
    """
    from .metrics import compute_distance_matrix

    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_groups, g_groups = np.asarray(q_groups), np.asarray(g_groups)
    junk = (q_pids[:, None] == g_pids[None, :]) & (q_groups[:, None] == g_groups[None, :])
    valid = np.flatnonzero(((q_pids[:, None] == g_pids[None, :]) & ~junk).any(axis=1))
    if len(valid) == 0:
        raise ValueError("no query has a true match in the gallery: nothing to draw")
    chosen = valid[np.unique(np.linspace(0, len(valid) - 1, min(num_queries, len(valid))).round().astype(int))]
    dist = compute_distance_matrix(np.asarray(query_features)[chosen], gallery_features, distance)
    ranked, correct = [], []
    for row, q in zip(dist, chosen):
        order = [j for j in np.argsort(row, kind="stable") if not junk[q, j]][:topk]
        ranked.append(order)
        correct.append(g_pids[order] == q_pids[q])
    k = min(len(r) for r in ranked)
    return chosen, np.array([r[:k] for r in ranked]), np.array([c[:k] for c in correct])


def _triple(split, index: int):
    row = split[int(index)]
    return tuple(row[m] for m in ("rgb", "nir", "tir"))


def write_rank_lists(query_split, gallery_split, query_indices, ranked, correct, path, cell_size=(96, 48)) -> Path:
    """Draw :func:`rank_list_for_queries`' result with the images of the dataset splits."""
    captions = [f"query #{int(q)}: pid {query_split[int(q)]['pid']}, camera {query_split[int(q)]['camid']}" for q in query_indices]
    queries = [_triple(query_split, q) for q in query_indices]
    gallery = [[_triple(gallery_split, g) for g in row] for row in ranked]
    return draw_rank_lists(queries, gallery, correct, path, captions=captions, cell_size=cell_size)
