"""Start PaLI-3 from public checkpoints: a SigLIP image tower and a T5 / Flan-T5 / UL2 text model.

The course trains its own stage-0 models (lessons 04 and 07); this module lets the PaLI-3 stages
start from the published ones instead::

    from pali3_edu.convert.pretrained import pali3_from_pretrained

    model = pali3_from_pretrained("google/siglip-base-patch16-224", "google/flan-t5-base")
    model.tokenizer            # T5's SentencePiece ids + <loc>/<seg>/[NLU]... after them

or step by step::

    tok = load_t5_tokenizer("google/flan-t5-base")                      # pali3_edu.convert.t5_tokenizer
    cfg = pali3_config_from_pretrained("google/siglip-base-patch16-224", "google/flan-t5-base", tokenizer=tok)
    model = init_pali3_from_pretrained(PaLI3(cfg), siglip="google/siglip-base-patch16-224",
                                       t5="google/flan-t5-base", tokenizer=tok)

Every ``name_or_path`` is either a **local folder** (what ``save_pretrained`` or
``hf download NAME --local-dir DIR`` writes) or a **Hub name** (``owner/name``).
Hub names are fetched by ``transformers`` (into its cache); with ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``) only the cache is read. A name that cannot be fetched gives
:class:`PretrainedUnavailableError` saying how to get the folder onto the machine.

What happens to each half:

* **SigLIP** → the course :class:`~pali3_edu.vit.ViT` (:func:`load_pretrained_vit`); PaLI-3 keeps
  the patch tokens and drops the attention-pooling head. A folder of a whole ``SiglipModel`` or of a
  ``SiglipVisionModel`` both work (the text tower is not loaded). A PaLI-3 built at another
  resolution gets the position grid interpolated (as in stage 2).
* **T5 / Flan-T5 / UL2** → the course :class:`~pali3_edu.encdec.EncoderDecoder`
  (:func:`load_pretrained_encdec`), then :func:`resize_token_embeddings` grows the vocabulary from
  T5's 32,128 rows to the course tokenizer's (32,100 T5 ids + 1,155 course tokens = 33,255,
  padded to 33,280). Rows 0 … 32,127 stay bit-identical, so the model computes exactly what the
  checkpoint computes on T5's ids.
* The **projector** (ViT width → ``d_model``) has no public counterpart: it stays freshly
  initialised and is what stage 1 trains first.

The tokenizer is the one question with no free lunch: a public T5 only knows T5's ids, so the
course's special tokens must come *after* them (see :mod:`pali3_edu.convert.t5_tokenizer`), and
their embeddings start untrained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pali3_edu.encdec import EncoderDecoder
from pali3_edu.pali3 import PaLI3, PaLI3Config
from pali3_edu.vit import ViT

__all__ = [
    "PretrainedUnavailableError",
    "init_pali3_from_pretrained",
    "load_pretrained_encdec",
    "load_pretrained_vit",
    "pali3_config_from_pretrained",
    "pali3_from_pretrained",
    "resize_token_embeddings",
]

SIGLIP_TYPES = ("siglip", "siglip_vision_model")
T5_TYPES = ("t5",)


class PretrainedUnavailableError(OSError):
    """A Hub name that could not be fetched (no internet, offline mode, or no such model)."""


# ---------------------------------------------------------------------------------------------
# Where a checkpoint comes from
# ---------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
# A Hub repository id: "name" or "owner/name" (letters, digits, "-", "_", ".").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to 1/true/yes/on."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved ``name_or_path``: a local folder/file, or a Hub name (``local=False``)."""

    name: str
    local: bool

    @property
    def hub_kwargs(self) -> dict[str, Any]:
        """``local_files_only`` for ``from_pretrained`` / ``hf_hub_download``."""
        return {"local_files_only": True if self.local else hub_offline()}


def resolve_source(name_or_path: str | os.PathLike) -> Source:
    """Decide whether ``name_or_path`` is a local folder or a Hub name.

    An existing path is local. A string that can only be a path (starts with ``/``, ``.`` or
    ``~``, or has more than one ``/``) and does not exist raises ``FileNotFoundError``. Anything
    else of the form ``name`` / ``owner/name`` is a Hub name.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a folder or a Hub name (str), got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return Source(str(path), local=True)
    if isinstance(name_or_path, os.PathLike) or not _HUB_ID.match(text):
        raise FileNotFoundError(
            f"no checkpoint folder at {text!r}: pass a folder written by save_pretrained "
            "(or by `hf download NAME --local-dir DIR`), or a Hugging Face Hub "
            "name such as 'google/flan-t5-base'."
        )
    return Source(text, local=False)


def unavailable(name: str, err: BaseException) -> PretrainedUnavailableError:
    """The error for a Hub name that could not be fetched, with what to do about it."""
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    mode = "offline mode (HF_HUB_OFFLINE is set) and it is not in the Hugging Face cache" \
        if hub_offline() else "is there internet, and is the name right?"
    folder = name.split("/")[-1]
    return PretrainedUnavailableError(
        f"could not load {name!r} from the Hugging Face Hub ({mode}; {detail}). "
        f"No internet: download it on a machine with internet with "
        f"`hf download {name} --local-dir {folder}` (huggingface_hub < 1.0: "
        f"`huggingface-cli download {name} --local-dir {folder}`), copy the folder here and pass "
        f"its path instead of the name (e.g. ./{folder}); or copy the Hugging Face cache over "
        "and set HF_HUB_OFFLINE=1."
    )


def _config(source: Source, kinds: tuple[str, ...], what: str, **hf_kwargs: Any) -> Any:
    """The ``transformers`` config at ``source``, checked to be one of ``kinds`` (model_type)."""
    import transformers

    kwargs = {**source.hub_kwargs, **hf_kwargs}
    if source.local:
        folder = Path(source.name)
        if folder.is_dir() and not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"{folder} has no config.json: pass the folder that save_pretrained or "
                "`hf download` wrote (the one with config.json and the weights)."
            )
    try:
        cfg = transformers.AutoConfig.from_pretrained(source.name, **kwargs)
    except OSError as e:
        if source.local:
            raise
        raise unavailable(source.name, e) from e
    if cfg.model_type not in kinds:
        raise ValueError(
            f"{source.name} is a {cfg.model_type!r} checkpoint, not {what} "
            f"(model_type {' or '.join(repr(k) for k in kinds)})."
        )
    return cfg


def _dtype_kwarg(dtype: torch.dtype | None) -> dict[str, Any]:
    if dtype is None:
        return {}
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype" if major >= 5 else "torch_dtype": dtype}


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence ``transformers``' load report while reading the vision tower out of a whole SigLIP
    checkpoint (its text weights are 'unexpected' on purpose)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# ---------------------------------------------------------------------------------------------
# Loading the two halves
# ---------------------------------------------------------------------------------------------


def _vision_config(cfg: Any) -> Any:
    return cfg.vision_config if cfg.model_type == "siglip" else cfg


def load_pretrained_vit(
    name_or_path: str | os.PathLike,
    *,
    with_head: bool = True,
    posemb_resize: Literal["bilinear", "bicubic"] = "bilinear",
    dtype: torch.dtype | None = torch.float32,
    **hf_kwargs: Any,
) -> ViT:
    """A course :class:`ViT` with the weights of a SigLIP checkpoint (folder or Hub name).

    ``name_or_path`` may hold a whole ``SiglipModel`` (``google/siglip-base-patch16-224``) or a
    ``SiglipVisionModel``. ``vit(x).tokens`` ``(batch, patches, width)`` equals the Hugging Face
    ``last_hidden_state``; with ``with_head=True`` ``vit(x).pooled`` equals its
    ``pooler_output``, with ``with_head=False`` the ViT has ``pool="none"`` (what PaLI-3 uses).
    ``dtype`` (default float32; ``None`` keeps the checkpoint's) and ``hf_kwargs``
    (``revision``, ``cache_dir``, ...) go to ``from_pretrained``.
    """
    import transformers

    from pali3_edu.convert.siglip import vit_from_hf

    source = resolve_source(name_or_path)
    cfg = _config(source, SIGLIP_TYPES, "a SigLIP model", **hf_kwargs)
    kwargs = {**source.hub_kwargs, **_dtype_kwarg(dtype), **hf_kwargs}
    try:
        with _quiet_transformers() if cfg.model_type == "siglip" else contextlib.nullcontext():
            hf = transformers.SiglipVisionModel.from_pretrained(source.name, **kwargs)
    except OSError as e:
        if source.local:
            raise
        raise unavailable(source.name, e) from e
    vit = vit_from_hf(hf.eval(), posemb_resize=posemb_resize)
    del hf
    if with_head or vit.cfg.pool == "none":
        return vit
    headless = ViT(dataclasses.replace(vit.cfg, pool="none")).to(next(vit.parameters()).dtype)
    headless.load_state_dict({k: v for k, v in vit.state_dict().items() if not k.startswith("head.")})
    return headless


def load_pretrained_encdec(
    name_or_path: str | os.PathLike,
    *,
    max_input_length: int = 512,
    dtype: torch.dtype | None = torch.float32,
    **hf_kwargs: Any,
) -> EncoderDecoder:
    """A course :class:`EncoderDecoder` with the weights of a T5 checkpoint (folder or Hub name).

    T5 v1.1 (``google/t5-v1_1-base``), Flan-T5 (``google/flan-t5-base``), UL2 (``google/ul2``:
    20B parameters, 80 GB in float32: pass ``dtype=torch.bfloat16``) and T5 v1.0 (tied head) all
    load; the model computes the same logits as ``T5ForConditionalGeneration`` on the same ids.
    Its vocabulary is the checkpoint's (32,128 rows for T5): grow it with
    :func:`resize_token_embeddings` before using the course's special tokens.
    """
    import transformers

    from pali3_edu.convert.t5 import t5_from_hf

    source = resolve_source(name_or_path)
    _config(source, T5_TYPES, "a T5 / Flan-T5 / UL2 encoder-decoder", **hf_kwargs)
    kwargs = {**source.hub_kwargs, **_dtype_kwarg(dtype), **hf_kwargs}
    try:
        hf = transformers.T5ForConditionalGeneration.from_pretrained(source.name, **kwargs)
    except OSError as e:
        if source.local:
            raise
        raise unavailable(source.name, e) from e
    # transformers >= 5 ties lm_head to `shared` unless the file holds a different lm_head; a
    # v1.1 checkpoint always does, so an untied model comes out untied (t5_from_hf copies both).
    return t5_from_hf(hf.eval(), max_input_length=max_input_length)


# ---------------------------------------------------------------------------------------------
# Growing the vocabulary
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def resize_token_embeddings(encdec: EncoderDecoder, new_vocab: int, *, seed: int = 0) -> EncoderDecoder:
    """Grow the shared embedding (and the untied output head) to ``new_vocab`` rows, in place.

    Rows ``0 … old-1`` are kept bit-identical, so every id the checkpoint knew means what it
    meant and gets the same logit. The new rows:

    * **input embedding**: ``N(0, 1)``, T5's initialisation of its embedding table;
    * **output head** (untied models): the *mean of the old head rows*. A new token then starts
      with the average logit, far below the tokens the checkpoint predicts with confidence, so
      the pretrained output distribution is barely disturbed until training teaches the new
      tokens (a random ``N(0, 1)`` row would give each of the ~1,150 new tokens a logit of the
      same size as a confident prediction, and the untrained model would start writing them).
      The rows are equal at first; the loss gradients tell them apart from the first step.

    A tied model (T5 v1.0) only grows its embedding. Returns ``encdec`` with
    ``encdec.cfg.vocab_size == new_vocab``. Shrinking is refused (it would drop trained rows).
    """
    old = encdec.embed_tokens.weight
    n_old, d_model = old.shape
    if int(new_vocab) != new_vocab or new_vocab < n_old:
        raise ValueError(
            f"new_vocab={new_vocab} must be an int >= the current {n_old} rows: resizing only "
            "grows the vocabulary (dropping rows would lose trained embeddings)."
        )
    new_vocab = int(new_vocab)
    if new_vocab == n_old:
        return encdec
    g = torch.Generator().manual_seed(seed)
    extra = torch.randn(new_vocab - n_old, d_model, generator=g, dtype=torch.float32)
    embed = nn.Embedding(new_vocab, d_model, device=old.device, dtype=old.dtype)
    embed.weight.copy_(torch.cat([old, extra.to(old)]))
    embed.weight.requires_grad_(old.requires_grad)
    encdec.embed_tokens = embed
    if encdec.lm_head is not None:
        w = encdec.lm_head.weight
        mean = w.double().mean(dim=0, keepdim=True).to(w.dtype)
        head = nn.Linear(d_model, new_vocab, bias=False, device=w.device, dtype=w.dtype)
        head.weight.copy_(torch.cat([w, mean.expand(new_vocab - n_old, -1)]))
        head.weight.requires_grad_(w.requires_grad)
        encdec.lm_head = head
    encdec.cfg = dataclasses.replace(encdec.cfg, vocab_size=new_vocab)
    return encdec


# ---------------------------------------------------------------------------------------------
# PaLI-3 from the two checkpoints
# ---------------------------------------------------------------------------------------------


def _check_tokenizer_keeps_t5_ids(tokenizer: Any, t5_vocab: int, where: str) -> None:
    """A tokenizer for a T5 checkpoint must give T5's ids to T5's tokens and put its own after."""
    kept = getattr(tokenizer, "original_vocab_size", None)
    if kept is None:  # a course Tokenizer: only T5-compatible if it appends nothing but sentinels
        kept = tokenizer.vocab_size if tokenizer.vocab_size <= t5_vocab else None
    if kept is None or kept > t5_vocab:
        raise ValueError(
            f"{where}: this tokenizer ({tokenizer!r}) does not keep the checkpoint's ids (its "
            f"special tokens would land on T5's trained rows 0 … {t5_vocab - 1}). Use "
            "pali3_edu.convert.t5_tokenizer.load_t5_tokenizer(<the T5 folder or name>), which "
            "puts the course's tokens after T5's."
        )


def pali3_config_from_pretrained(
    siglip: str | os.PathLike,
    t5: str | os.PathLike,
    *,
    tokenizer: Any = None,
    image_size: int | None = None,
    max_prompt_len: int = 24,
    max_answer_len: int = 24,
    visual_posemb: Literal["none", "sincos2d"] = "none",
    posemb_resize: Literal["bilinear", "bicubic"] = "bilinear",
    **hf_kwargs: Any,
) -> PaLI3Config:
    """A :class:`PaLI3Config` with the shapes of the two checkpoints (reads only their configs).

    ``vision``: the SigLIP tower without pooling head (``pool="none"``), at ``image_size``
    (default: the checkpoint's). ``text``: the T5 shape with ``vocab_size`` =
    ``tokenizer.padded_vocab_size`` (the tokenizer defaults to
    :func:`~pali3_edu.convert.t5_tokenizer.load_t5_tokenizer` on ``t5``, which needs its
    ``spiece.model``) and ``max_input_length`` large enough for patches + prompt.
    """
    from pali3_edu.convert.siglip import vit_config_from_hf
    from pali3_edu.convert.t5 import config_from_hf

    vcfg = _config(resolve_source(siglip), SIGLIP_TYPES, "a SigLIP model", **hf_kwargs)
    tcfg = _config(resolve_source(t5), T5_TYPES, "a T5 / Flan-T5 / UL2 encoder-decoder", **hf_kwargs)
    vision = dataclasses.replace(vit_config_from_hf(_vision_config(vcfg), posemb_resize), pool="none")
    if image_size is not None:
        vision = dataclasses.replace(vision, image_size=image_size)
    if tokenizer is None:
        from pali3_edu.convert.t5_tokenizer import load_t5_tokenizer

        tokenizer = load_t5_tokenizer(t5, **{k: v for k, v in hf_kwargs.items()
                                             if k in ("cache_dir", "revision", "token")})
    _check_tokenizer_keeps_t5_ids(tokenizer, tcfg.vocab_size, "pali3_config_from_pretrained")
    text = config_from_hf(tcfg, max_input_length=max(512, vision.num_patches + max_prompt_len))
    text = dataclasses.replace(text, vocab_size=max(text.vocab_size, tokenizer.padded_vocab_size))
    return PaLI3Config(vision=vision, text=text, max_prompt_len=max_prompt_len,
                       max_answer_len=max_answer_len, visual_posemb=visual_posemb)


def _config_mismatch(ours: Any, theirs: Any, ignore: tuple[str, ...]) -> list[str]:
    a, b = dataclasses.asdict(ours), dataclasses.asdict(theirs)
    return [f"{k}: model {a[k]!r} vs checkpoint {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]


@torch.no_grad()
def init_pali3_from_pretrained(
    model: PaLI3,
    siglip: str | os.PathLike | None = None,
    t5: str | os.PathLike | None = None,
    tokenizer: Any = None,
    *,
    seed: int = 0,
    **hf_kwargs: Any,
) -> PaLI3:
    """Load public weights into ``model`` (in place; returned for chaining).

    * ``siglip``: the ViT's weights (its pooling head is dropped). If ``model`` works at another
      resolution the learned position grid is interpolated (``model.vit.cfg.posemb_resize``).
    * ``t5``: the encoder-decoder's weights, its vocabulary grown to the model's with
      :func:`resize_token_embeddings` (``seed`` draws the new embedding rows).
    * ``tokenizer`` is attached as ``model.tokenizer`` after checking it fits: it must keep T5's
      ids (:func:`~pali3_edu.convert.t5_tokenizer.load_t5_tokenizer`) and fit the embedding.

    Build ``model`` with :func:`pali3_config_from_pretrained` so the shapes match; a mismatch
    raises ``ValueError`` naming the fields. The projector is left as it is (trained in stage 1).
    Note: the course recipes' ``ordinal_loc_init`` then overwrites the ``<loc>`` rows.
    """
    if not isinstance(model, PaLI3):
        raise TypeError(f"model must be a pali3_edu.pali3.PaLI3, got {type(model).__name__}")
    if siglip is None and t5 is None and tokenizer is None:
        raise ValueError("nothing to load: pass siglip=..., t5=... and/or tokenizer=...")
    if tokenizer is not None and tokenizer.padded_vocab_size > model.encdec.cfg.vocab_size:
        raise ValueError(
            f"the tokenizer needs {tokenizer.padded_vocab_size} embedding rows but the model has "
            f"{model.encdec.cfg.vocab_size}: build the model with "
            "pali3_config_from_pretrained(..., tokenizer=tokenizer)."
        )
    if siglip is not None:
        vit = load_pretrained_vit(siglip, with_head=False, posemb_resize=model.vit.cfg.posemb_resize,
                                  dtype=None, **hf_kwargs)
        if vit.cfg.image_size != model.vit.cfg.image_size:
            if vit.cfg.posemb != "learn" or model.vit.cfg.image_size % vit.cfg.patch_size:
                raise ValueError(
                    f"cannot bring the {vit.cfg.image_size}px checkpoint to the model's "
                    f"{model.vit.cfg.image_size}px (patch {vit.cfg.patch_size})."
                )
            vit.set_image_size(model.vit.cfg.image_size)  # interpolate the position grid
        bad = _config_mismatch(model.vit.cfg, vit.cfg, ignore=("dropout",))
        if bad:
            raise ValueError(f"the ViT of {siglip} does not fit the model ({'; '.join(bad)}): build the "
                             "model with pali3_config_from_pretrained(siglip, t5).")
        dtypes = {k: p.dtype for k, p in model.vit.state_dict().items()}
        model.vit.load_state_dict({k: v.to(dtypes.get(k, v.dtype)) for k, v in vit.state_dict().items()})
    if t5 is not None:
        encdec = load_pretrained_encdec(t5, dtype=None, **hf_kwargs)
        t5_vocab = encdec.cfg.vocab_size
        if tokenizer is not None:
            _check_tokenizer_keeps_t5_ids(tokenizer, t5_vocab, "init_pali3_from_pretrained")
        ours = model.encdec.cfg
        bad = _config_mismatch(ours, encdec.cfg, ignore=("vocab_size", "max_input_length", "dropout_rate"))
        if bad:
            raise ValueError(f"the encoder-decoder of {t5} does not fit the model ({'; '.join(bad)}): "
                             "build the model with pali3_config_from_pretrained(siglip, t5).")
        if ours.vocab_size < t5_vocab:
            raise ValueError(
                f"the model's vocabulary ({ours.vocab_size}) is smaller than the checkpoint's "
                f"({t5_vocab}): build the model with pali3_config_from_pretrained(siglip, t5)."
            )
        resize_token_embeddings(encdec, ours.vocab_size, seed=seed)
        dtypes = {k: p.dtype for k, p in model.encdec.state_dict().items()}
        model.encdec.load_state_dict({k: v.to(dtypes.get(k, v.dtype)) for k, v in encdec.state_dict().items()})
    if tokenizer is not None:
        model.tokenizer = tokenizer
    return model


def pali3_from_pretrained(
    siglip: str | os.PathLike,
    t5: str | os.PathLike,
    *,
    tokenizer: Any = None,
    seed: int = 0,
    **config: Any,
) -> PaLI3:
    """A PaLI-3 whose ViT is ``siglip``'s and whose encoder-decoder is ``t5``'s, with a
    T5-compatible course tokenizer attached (``load_t5_tokenizer(t5)`` unless one is given).

    ``config`` keywords go to :func:`pali3_config_from_pretrained` (``image_size``,
    ``max_prompt_len``, ``max_answer_len``, ``visual_posemb``, ``posemb_resize``, and
    ``from_pretrained`` keywords such as ``cache_dir``). The projector is initialised with
    ``torch.manual_seed(seed)``.
    """
    hf_kwargs = {k: config[k] for k in ("cache_dir", "revision", "token") if k in config}
    if tokenizer is None:
        from pali3_edu.convert.t5_tokenizer import load_t5_tokenizer

        tokenizer = load_t5_tokenizer(t5, **hf_kwargs)
    cfg = pali3_config_from_pretrained(siglip, t5, tokenizer=tokenizer, **config)
    torch.manual_seed(seed)
    model = PaLI3(cfg)
    return init_pali3_from_pretrained(model, siglip, t5, tokenizer, seed=seed, **hf_kwargs)

