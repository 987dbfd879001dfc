"""The model factory of ``train.py``: a model name, a backbone and options -> a config sized for the dataset -> a model.

``--model`` names a built-in model (the registry, :data:`mmreid.models.BUILTIN_MODELS`) or a directory / Hub id holding a ``config.json`` with an
``auto_map`` (remote code), so any model that honours docs/interfaces.md trains without an edit to this project.
What the factory relies on, and nothing more:

- the config accepts ``num_labels``, ``num_cameras`` and ``image_size`` (set from the dataset and the recipe), and
  each option the run sets (an unknown one is refused, naming the config class);
- a config class with ``from_backbone_config`` is built around ``--backbone``'s config (and ``--text-backbone``'s,
  passed as ``text_backbone_config``), and a model class with ``from_pretrained_towers`` loads its pretrained weights
  (the text tower's from ``text_pretrained_model_name_or_path``); without them the model's own config defines its
  tower; the config's ``image_mean`` / ``image_std``, when it has them, are set from the tower's processor config;
- a config whose ``uses_text`` is true reads captions; the run then needs a tokenizer.
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, first_line
from ..models import BUILTIN_MODELS
from .backbones import (
    BACKBONE_HINT,
    RANDOM_BACKBONES,
    TEXT_BACKBONE_HINT,
    backbone_config,
    local_or_hub,
    text_backbone_config,
    tokenizer_ids,
    tower_normalization,
)

__all__ = ["BUILTIN_MODELS", "ModelRecipe", "accepted_options"]

logger = logging.getLogger(__name__)

# Config fields every run sets from the dataset and the recipe (see ModelRecipe.config), so they are no options.
RUN_FIELDS = ("num_labels", "num_cameras", "image_size")
CAPTION_TOKENIZER_MAX_LENGTH = 64  # captions of the released sets fit (tokens); random text towers only
# A loaded caption tokenizer is refused below this vocabulary or above this share of unknown tokens in the captions.
MIN_TOKENIZER_VOCABULARY = 32
MAX_UNKNOWN_TOKEN_SHARE = 0.5
CAPTION_SAMPLE = 256  # training rows whose captions are checked
PROBE_CAPTION = "A person in a dark coat walks to the left, carrying a bag."


def accepted_options(config_class: type) -> set[str]:
    """Every keyword the config's ``__init__`` chain declares (the class, its bases, ``PretrainedConfig``)."""
    names = set()
    for cls in config_class.__mro__:
        if "__init__" in vars(cls):
            names |= {p.name for p in inspect.signature(cls.__init__).parameters.values()
                      if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names - {"self"}


def _merge(base: dict, updates: dict) -> dict:
    out = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class ModelRecipe:
    """A resolved ``--model`` / ``--backbone`` / options triple, from which configs and models are built."""

    name: str
    config_class: type
    model_class: type
    options: dict
    base_config: object = None  # a remote model's own config (None for built-ins)
    backbone: str | None = None  # None: the model's own config defines its tower
    tower_config: object = None  # --backbone's config
    text_backbone: str | None = None  # --text-backbone: the text tower of a captions-reading model
    text_tower_config: object = None  # --text-backbone's config

    @classmethod
    def resolve(cls, model: str, backbone: str | None, options: dict, text_backbone: str | None = None) -> "ModelRecipe":
        """Look ``model`` up (built-in, or remote code from a directory / Hub id) and read ``backbone``'s config (and
        ``text_backbone``'s). A model that reads captions with a tower that has no text half and no
        ``text_backbone`` is refused here, in one line."""
        base = None
        if model in BUILTIN_MODELS:
            entry = BUILTIN_MODELS[model]
            config_class, model_class = entry.config_class, entry.model_class
        else:
            config_class, model_class, base = _remote_classes(model)
        recipe = cls(model, config_class, model_class, dict(options), base)
        if hasattr(config_class, "from_backbone_config"):
            recipe.backbone = backbone
            recipe.tower_config = backbone_config(backbone)
            if text_backbone is not None:
                if "text_backbone_config" not in inspect.signature(config_class.from_backbone_config).parameters:
                    raise UsageError(f"--text-backbone: --model {model} has no text tower to take from it; drop it")
                if backbone in RANDOM_BACKBONES:
                    raise UsageError(f"--text-backbone: --backbone {backbone} is a random-init tower with its own "
                                     "random text tower; name a pretrained --backbone, or drop --text-backbone")
                recipe.text_backbone = text_backbone
                recipe.text_tower_config = text_backbone_config(text_backbone)
        elif backbone is not None:
            logger.warning("--model %s: its config defines its own tower; --backbone %s is not used", model, backbone)
        recipe._check_option_names()
        recipe._check_text_tower()
        return recipe

    def _check_text_tower(self) -> None:
        """A model that reads captions needs a text tower: the backbone's own (a dual checkpoint) or
        ``--text-backbone``'s; refused in one line otherwise, before any work."""
        if self.tower_config is None or self.text_tower_config is not None or self.random_tower:
            return
        if getattr(self.tower_config, "text_config", None) is not None:
            return  # a dual checkpoint: its text half
        if self.uses_text():
            raise UsageError(f"--backbone {self.backbone} is a {self.tower_config.model_type!r} image tower without a "
                             f"text tower, and --model {self.name} reads captions: add --text-backbone (e.g. "
                             "openai/clip-vit-base-patch16 or google/siglip2-base-patch16-224), or --use-text false")

    @property
    def random_tower(self) -> bool:
        return self.backbone in RANDOM_BACKBONES

    def _check_option_names(self) -> None:
        accepted = accepted_options(self.config_class)
        placeholder = self._base_config()
        for key, value in self.options.items():
            if isinstance(value, dict):
                if not hasattr(placeholder, key):
                    raise UsageError(f"model option {key}.*: {self.config_class.__name__} has no sub-config {key!r}")
            elif key not in accepted and not hasattr(placeholder, key):
                raise UsageError(f"--{key.replace('_', '-')} is not an option of {self.config_class.__name__} "
                                 f"(--model {self.name}); see python train.py --help")
        self.config(num_labels=2, num_cameras=0)  # bad option values fail here, before any work

    def _base_config(self):
        """The config before the run's options: around --backbone's tower, or the remote model's own."""
        if self.tower_config is None:
            return self.base_config if self.base_config is not None else self.config_class()
        kwargs = {}
        if self.text_tower_config is not None:
            kwargs["text_backbone_config"] = copy.deepcopy(self.text_tower_config)
        if "image_mean" in accepted_options(self.config_class):
            kwargs.update(tower_normalization(self.backbone, self.tower_config))
        try:
            return self.config_class.from_backbone_config(copy.deepcopy(self.tower_config), **kwargs)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"--backbone {self.backbone} does not fit --model {self.name}: {first_line(exc)}") from None

    def config(self, num_labels: int, num_cameras: int, image_size=None, tokenizer=None):
        """The config of this run: the tower's (or remote model's) config, the options, the dataset's sizes.

        ``tokenizer`` (random text towers only) sets the text tower's vocabulary, special ids and length. Bad option
        values are a :class:`UsageError` naming the config class.
        """
        values = self._base_config().to_dict()
        for key in ("id2label", "label2id"):
            values.pop(key, None)
        values = _merge(values, self.options)
        values.update(num_labels=num_labels, num_cameras=num_cameras)
        if image_size is not None:
            values["image_size"] = tuple(image_size)
        if tokenizer is not None and self.random_tower and isinstance(values.get("text_config"), dict):
            values["text_config"].update(tokenizer_ids(tokenizer), max_position_embeddings=tokenizer.model_max_length)
        try:
            return self.config_class.from_dict(values)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{self.config_class.__name__} (--model {self.name}): {first_line(exc)}") from None

    def uses_text(self) -> bool:
        """Whether the model reads captions (and so needs a tokenizer)."""
        return bool(getattr(self.config(num_labels=2, num_cameras=0), "uses_text", False))

    def tokenizer(self, train_split):
        """The caption tokenizer of a text model: a remote model's own, the pretrained backbone's, or (random text
        towers) a word-level one built from the training captions; None for image-only models."""
        if not self.uses_text():
            return None
        from transformers import AutoTokenizer

        from ..data.collate import CAPTION_COLUMNS
        from ..data.text import build_caption_tokenizer

        if self.random_tower:
            texts = [t for c in CAPTION_COLUMNS if c in train_split.column_names for t in train_split[c] if t]
            if not texts:
                logger.warning("--model %s: the dataset has no captions; the model will use its no-text embeddings",
                               self.name)
                texts = ["no caption"]
            return build_caption_tokenizer(texts, model_max_length=CAPTION_TOKENIZER_MAX_LENGTH)
        source = self.text_backbone or (self.backbone if self.backbone is not None else self.name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(local_or_hub(source),
                                                      trust_remote_code=self.base_config is not None)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{source}: no tokenizer loads from it ({first_line(exc)}); --model {self.name} reads "
                             "captions and needs the tokenizer saved beside the weights") from None
        sample = train_split.select(range(min(len(train_split), CAPTION_SAMPLE)))
        texts = [t for c in CAPTION_COLUMNS if c in sample.column_names for t in sample[c] if t]
        problem = tokenizer_problem(tokenizer, texts)
        if problem:
            option = ("--text-backbone" if self.text_backbone
                      else "--backbone" if self.backbone is not None else "--model")
            raise UsageError(f"{option} {source}: its tokenizer cannot encode the captions ({problem}); the folder "
                             "lacks its tokenizer files (tokenizer.json, or vocab.json + merges.txt): save the "
                             "checkpoint's tokenizer beside its weights") from None
        return tokenizer

    def build(self, config):
        """The model: pretrained towers from ``--backbone`` when the model can load them, else random init."""
        if self.backbone is None or self.random_tower:
            if self.random_tower and self.backbone != "tiny":
                logger.warning("--backbone %s: random initialisation of the ViT-B/16 shapes, not the papers' recipe",
                               self.backbone)
            return self.model_class(config)
        if not hasattr(self.model_class, "from_pretrained_towers"):
            raise UsageError(f"--model {self.name} cannot load pretrained towers (its class has no "
                             f"from_pretrained_towers); name a random-init tower with --backbone")
        kwargs = {}
        if self.text_backbone is not None:
            kwargs["text_pretrained_model_name_or_path"] = local_or_hub(self.text_backbone)
        try:
            return self.model_class.from_pretrained_towers(local_or_hub(self.backbone), config, **kwargs)
        except (OSError, ValueError) as exc:
            option = f"--backbone {self.backbone}" + (f" / --text-backbone {self.text_backbone}" if kwargs else "")
            hint = BACKBONE_HINT + ("; " + TEXT_BACKBONE_HINT if kwargs else "")
            raise UsageError(f"{option}: could not load the tower(s) ({first_line(exc)}); {hint}") from None


def tokenizer_problem(tokenizer, captions: list[str]) -> str | None:
    """Why ``tokenizer`` cannot encode ``captions`` (or, without captions, a probe sentence), or None.

    Why: a CLIP folder without tokenizer files still gives a tokenizer (a 2-entry one whose every word is its
    unknown token), so the text branch would train on one repeated id and the checkpoint ship that tokenizer."""
    vocabulary = len(tokenizer)
    if vocabulary < MIN_TOKENIZER_VOCABULARY:
        return f"a vocabulary of {vocabulary} tokens"
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return None  # byte-level tokenizers have no unknown token: every text encodes
    ids = [i for text in (captions or [PROBE_CAPTION]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    share = sum(i == unknown for i in ids) / max(len(ids), 1)
    if share > MAX_UNKNOWN_TOKEN_SHARE:
        return f"{share:.0%} of the caption tokens are its unknown token {tokenizer.unk_token!r}"
    return None


def _remote_classes(model: str):
    """(config class, model class, config) of a remote-code model folder or Hub repo."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    source = local_or_hub(model)
    if Path(model).expanduser().exists() and not (Path(source) / "config.json").is_file():
        raise UsageError(f"--model {model}: no config.json in that directory; pass {' or '.join(BUILTIN_MODELS)}, "
                         "or a folder holding a config.json with an auto_map (remote code)")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model {model}: could not read its config ({first_line(exc)}); pass "
                         f"{' or '.join(BUILTIN_MODELS)}, or a folder / Hub id with a config.json") from None
    reference = (getattr(config, "auto_map", None) or {}).get("AutoModel")
    if reference is None:
        raise UsageError(f"--model {model}: its config.json has no auto_map for AutoModel: the model code must "
                         "travel with it (register_for_auto_class('AutoModel') before save_pretrained)")
    model_class = get_class_from_dynamic_module(reference, source)
    if getattr(model_class, "_auto_class", None) is None:
        # Registered in the user's script rather than its module: register it here, as AutoModel.from_pretrained
        # does, so that every save_pretrained of the run copies its code (checkpoint_files.copy_model_code too).
        model_class.register_for_auto_class("AutoModel")
    return type(config), model_class, config
