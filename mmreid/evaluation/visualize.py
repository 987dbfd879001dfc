"""Pictures of an evaluation: rank lists, ATMoE expert weights, and a 2-D (t-SNE or PCA) map of the features.

Pure drawing functions (no model, no dataset): callers pass images, weights and features.
Matplotlib is used through its object API with the Agg canvas, so importing this module never
changes the global backend, and figure sizes in pixels are exactly ``figsize * dpi``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.collate import MODALITY_COLUMNS

DEFAULT_EXPERT_NAMES = ("R", "N", "T", "RN", "RT", "NT", "RNT")
MODALITY_LABELS = ("RGB", "NIR", "TIR")

logger = logging.getLogger(__name__)

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
    if image is not None:  # a modality the row lacks stays an empty (grey) tile
        tile.paste(image.convert("RGB").resize((cell_w, cell_h), Image.BILINEAR), (BORDER, BORDER))
    else:
        tile.paste((128, 128, 128), (BORDER, BORDER, BORDER + cell_w, BORDER + cell_h))
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
    # the default names are modality combinations; say what the letters stand for
    title = "expert\n(R = RGB, N = NIR,\nT = TIR)" if tuple(expert_names) == DEFAULT_EXPERT_NAMES else "expert"
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title=title, fontsize=8, title_fontsize=8)


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
    xlabel: Optional[str] = None,
) -> Path:
    """Mean expert weight under each missing-modality setting: one stacked bar per setting.

    ``mean_weights`` maps a setting label (e.g. "Full", "M (RGB)") to a vector of expert weights;
    ``xlabel`` can explain the labels' notation.
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
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    ax.set_title("ATMoE expert weights under missing modalities")
    path = Path(path)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def _l2_normalise(features) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (num_items, dim), got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pca_2d(features) -> np.ndarray:
    """Project features (L2-normalised first, as retrieval sees them) on their first two principal axes."""
    x = _l2_normalise(features)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([x @ vt[:1].T, np.zeros(len(x))])


def tsne_perplexity(num_samples: int) -> float:
    """scikit-learn's default 30, lowered for small sets: t-SNE needs perplexity < number of points, and
    a perplexity near the set size makes every point a neighbour of every other (one blob)."""
    return float(min(30.0, max(1.0, (num_samples - 1) / 3.0)))


def tsne_2d(features, random_state: int = 0, perplexity: Optional[float] = None) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of the L2-normalised features: euclidean distances between them rank the
    gallery like the retrieval distance, so t-SNE neighbours are retrieval neighbours. Fixed
    ``random_state`` and PCA initialisation make it deterministic. Raises ImportError without scikit-learn."""
    from sklearn.manifold import TSNE

    x = _l2_normalise(features)
    if len(x) < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {len(x)}")
    if perplexity is None:
        perplexity = tsne_perplexity(len(x))
    if not 0 < perplexity < len(x):
        raise ValueError(f"perplexity must be in (0, {len(x)}) for {len(x)} points, got {perplexity}")
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=random_state)
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


EMBEDDING_METHODS = ("auto", "tsne", "pca")
_METHOD_LABELS = {"tsne": "t-SNE", "pca": "PCA"}


def choose_embedding_method(method: str = "auto") -> str:
    """Resolve ``method``: "auto" gives "tsne" when scikit-learn imports, else "pca" with one logged line.

    Why a separate step: callers name the picture after the method before drawing it.
    """
    if method not in EMBEDDING_METHODS:
        raise ValueError(f"unknown embedding method {method!r}: use one of {', '.join(EMBEDDING_METHODS)}")
    if method != "auto":
        return method
    try:
        from sklearn.manifold import TSNE  # noqa: F401
    except ImportError:
        logger.warning("scikit-learn is not installed: the feature map uses PCA instead of t-SNE "
                       "(pip install scikit-learn)")
        return "pca"
    return "tsne"


def embed_2d(features, method: str = "auto", random_state: int = 0) -> tuple[np.ndarray, str]:
    """``(coordinates (N, 2), method used)``: t-SNE if scikit-learn is importable, else PCA (see
    :func:`choose_embedding_method`)."""
    method = choose_embedding_method(method)
    if method == "tsne":
        return tsne_2d(features, random_state=random_state), method
    return pca_2d(features), method


def _identity_colors(num: int):
    """Distinct colours: tab10 up to 10 identities; beyond, tab20's dark shades first, then its light ones
    (tab20 in its own order puts each dark shade beside its light twin)."""
    from matplotlib import colormaps

    if num <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(num)]
    cmap = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [cmap(order[i % 20]) for i in range(num)]


def plot_feature_scatter(
    features,
    pids,
    path: str | Path,
    is_query=None,
    max_identities: int = 20,
    figsize: tuple[float, float] = (8, 6),
    dpi: int = 100,
    subject: str = "retrieval features",
    method: str = "auto",
    random_state: int = 0,
) -> Path:
    """Paper Fig. 4 style map: a 2-D t-SNE (PCA without scikit-learn, or if asked) of the features of the
    first ``max_identities`` identities (in order of appearance), one colour per identity; queries drawn
    as crosses, gallery entries as dots. ``is_query=None``: one set serves as query and gallery.

    The title says the method and how many identities are shown; it is also stored in the PNG's
    "Title" text field.
    """
    from matplotlib.lines import Line2D

    feats = np.asarray(features)
    pids = np.asarray(pids)
    if len(feats) != len(pids) or len(feats) < 2:
        raise ValueError(f"need at least 2 features with one pid each, got {len(feats)} features and {len(pids)} pids")
    if max_identities < 1:
        raise ValueError(f"max_identities must be >= 1, got {max_identities}")
    all_ids = list(dict.fromkeys(pids.tolist()))
    keep_ids = all_ids[:max_identities]
    mask = np.isin(pids, keep_ids)
    if mask.sum() < 2:
        raise ValueError(f"the first {len(keep_ids)} identities have {int(mask.sum())} feature(s): need at least 2 "
                         "points to draw; raise max_identities")
    xy, method = embed_2d(feats[mask], method, random_state)
    pids_kept = pids[mask]
    query = np.zeros(len(pids), dtype=bool) if is_query is None else np.asarray(is_query, dtype=bool)
    if len(query) != len(pids):
        raise ValueError(f"is_query has {len(query)} entries but there are {len(pids)} features")
    query = query[mask]

    fig = _figure(figsize, dpi)
    ax = fig.add_axes((0.06, 0.08, 0.72, 0.82))
    colors = _identity_colors(len(keep_ids))
    for pid, color in zip(keep_ids, colors):
        sel = pids_kept == pid
        ax.scatter(xy[sel & ~query, 0], xy[sel & ~query, 1], s=22, color=color, marker="o", alpha=0.75,
                   edgecolors="none")
        ax.scatter(xy[sel & query, 0], xy[sel & query, 1], s=46, color=color, marker="x", linewidths=1.6)
    label = _METHOD_LABELS[method]
    shown = (f"all {len(all_ids)} identities" if len(keep_ids) == len(all_ids)
             else f"first {len(keep_ids)} of {len(all_ids)} identities")
    title = f"{subject}: {label}, {shown}, colour = identity"
    ax.set_title(title, fontsize=10)
    if method == "tsne":
        # t-SNE axes have no units or meaning; only which points lie near which does.
        ax.set_xlabel("t-SNE dimension 1 (only neighbourhoods are meaningful)", fontsize=8)
        ax.set_ylabel("t-SNE dimension 2", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.set_xlabel("principal component 1 (of L2-normalised features)", fontsize=8)
        ax.set_ylabel("principal component 2", fontsize=8)
        ax.tick_params(labelsize=7)
    gray = "0.35"
    if query.any():
        marks = [Line2D([], [], ls="", marker="x", color=gray, markersize=7, mew=1.6, label="query"),
                 Line2D([], [], ls="", marker="o", color=gray, markersize=6, label="gallery")]
    else:
        marks = [Line2D([], [], ls="", marker="o", color=gray, markersize=6,
                        label="image\n(query and gallery\nare one set)" if is_query is None else "gallery")]
    # identities listed from the top right, the marker key at the bottom right: they never overlap
    marker_legend = ax.legend(handles=marks, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8,
                              title="marker", title_fontsize=8, frameon=False)
    ax.add_artist(marker_legend)
    id_handles = [Line2D([], [], ls="", marker="s", color=c, markersize=7, label=str(p))
                  for p, c in zip(keep_ids, colors)]
    ax.legend(handles=id_handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="identity (pid)",
              title_fontsize=8, ncol=-(-len(keep_ids) // 22), frameon=False)
    path = Path(path)
    fig.savefig(path, format="png", dpi=dpi, metadata={"Title": title})
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
    return tuple(row[m] for m in MODALITY_COLUMNS)


def write_rank_lists(query_split, gallery_split, query_indices, ranked, correct, path, cell_size=(96, 48)) -> Path:
    """Draw :func:`rank_list_for_queries`' result with the images of the dataset splits."""
    captions = [f"query #{int(q)}: pid {query_split[int(q)]['pid']}, camera {query_split[int(q)]['camid']}" for q in query_indices]
    queries = [_triple(query_split, q) for q in query_indices]
    gallery = [[_triple(gallery_split, g) for g in row] for row in ranked]
    return draw_rank_lists(queries, gallery, correct, path, captions=captions, cell_size=cell_size)
