"""What the model card of a checkpoint says about the model itself (train.py adds dataset, recipe and metrics)."""

__all__ = ["MODEL_CARD_TEXT"]

# model_type -> description (first sentence of the card), tags, and extra sections (title -> Markdown lines).
MODEL_CARD_TEXT = {
    "demo_reid": {
        "description": "DeMo (Decoupled Feature-Based Mixture of Experts, AAAI 2025) multi-modal (RGB / NIR / TIR) "
        "object re-identification model",
        "tags": ("demo",),
        "sections": {},
    },
    "next_reid": {
        "description": "NEXT (text-modulated multi-grained experts, arXiv 2505.20001) multi-modal (RGB / NIR / TIR) "
        "object re-identification model, in this repository's own implementation",
        "tags": ("next", "text-modulated"),
        "sections": {
            "Our reading of the paper's framework figure": [
                "The NEXT authors have not released code. This model implements their framework figure (TMSE, "
                "CSSE, MGFA); every choice the figure leaves open is ours, not the authors':",
                "",
                "- the saliency map alpha: softmax over patches of the scaled class-token-to-patch dot product;",
                "- the text modulation: one FC -> QuickGELU -> FC network per expert on the three concatenated "
                "beta maps, added to alpha;",
                "- differentiable top-k: the k kept patches of each modality are scaled by k x softmax of their "
                "scores, so the selection scores receive gradients;",
                "- each semantic expert pools its 3k tokens with one learned-query attention layer and an MLP;",
                "- CSSE: Soft-MoE routing with several slots per structure expert; each expert's feature is the "
                "combine-weighted mean of its slot outputs; no balance loss;",
                "- MGFA: one multi-head cross-attention per branch with the three class tokens as queries;",
                "- captions: in training each semantic expert sees its own seeded random subset of sentences of each "
                "modality's caption, in evaluation the whole caption; a learned no-text embedding per expert and "
                "modality replaces missing captions (and all captions with use_text=False);",
                "- the retrieval feature: concat(class tokens, final MGFA feature); ID + triplet loss on the class "
                "tokens, the semantic and structure branches and the final feature;",
                "- expert counts, k and sentences per expert: chosen by a small sweep on the synthetic set "
                "(docs/next.md).",
            ],
        },
    },
}
