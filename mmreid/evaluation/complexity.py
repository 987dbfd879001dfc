"""Model complexity as reported in paper Table 5: trainable parameters and multiply-accumulates per triple."""

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_trainable_parameters(model: torch.nn.Module) -> int:
    """Number of parameters with `requires_grad` (the frozen BN-neck biases are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: torch.nn.Module, image_size: tuple[int, int] | None = None,
               caption_length: int | None = None) -> int:
    """Multiply-accumulates (FLOPs / 2) of one RGB/NIR/TIR triple in eval mode, counted by torch's FLOP counter;
    with ``caption_length``, of the triple with three captions of that many tokens (NEXT, IDEA: the text tower's
    share), else of the images alone.

    Runs with autograd enabled (the counter's module tracker fails on parameter views made under `no_grad`) and
    with eager attention in the tower (the counter has no formula for the CPU flash-attention kernel, so SDPA's
    attention products would go uncounted).
    """
    height, width = image_size or model.config.image_size
    parameter = next(model.parameters())
    pixel_values = torch.zeros(1, 3, 3, height, width, dtype=parameter.dtype, device=parameter.device)
    camera_ids = torch.zeros(1, dtype=torch.long, device=parameter.device) if model.config.num_cameras else None
    text = {}
    if caption_length:  # full-length captions that start and end as the tokenizer's do
        ids = torch.ones(1, 3, caption_length, dtype=torch.long, device=parameter.device)
        text_config = model.config.text_config
        for position, token in ((0, text_config.bos_token_id), (-1, text_config.eos_token_id)):
            if token is not None:
                ids[..., position] = token
        text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    vision_config = model.config.vision_config
    was_training, attention = model.training, vision_config._attn_implementation
    model.eval()
    vision_config._attn_implementation = "eager"
    try:
        with FlopCounterMode(display=False) as counter:
            model(pixel_values=pixel_values, camera_ids=camera_ids, **text)
    finally:
        model.train(was_training)
        vision_config._attn_implementation = attention
    return counter.get_total_flops() // 2
