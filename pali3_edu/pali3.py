"""PaLI-3: a SigLIP vision transformer and a UL2 encoder-decoder, joined by a linear projector.

The data flow, with the shapes of the ``tiny-cpu`` preset (64 px images, patch 8, width 128)::

    pixel_values (B, 3, 64, 64)
      └─ ViT, no pooling head ───────────► patch tokens  (B, 64, vit_width)
           └─ projector (one Linear) ─────► visual tokens (B, 64, d_model)
    input_ids (B, S) ─ token embedding ──► prompt tokens (B, S, d_model)
    [visual tokens ; prompt tokens] ─────► encoder input (B, 64 + S, d_model)
      └─ UL2 encoder (full attention; prompt padding masked, image tokens never)
           └─ decoder (teacher forcing, cross-attention to the encoder) ─► logits (B, T, vocab)

This follows the PaLI-3 paper (Chen et al., 2023): "the outputs of the ViT image encoder before
pooling form the visual tokens, which are linearly projected and prepended to the embedded input
text tokens". The loss is the token-mean cross-entropy over the answer (``labels`` of -100 are
ignored, as in ``transformers``), so prompts and padding never count.

**A stated choice.** The paper does not say how the encoder's relative position buckets span image
and text. Here the joint sequence is treated as one sequence: patch tokens take positions
``0 .. P-1`` in raster order and the prompt continues from ``P``. (PaliGemma's prefix-LM makes the
same choice for its decoder.)

>>> model = PaLI3(PaLI3Config.tiny())
>>> out = model(torch.zeros(2, 3, 64, 64), torch.ones(2, 5, dtype=torch.long),
...             labels=torch.ones(2, 3, dtype=torch.long))
>>> tuple(out.logits.shape), out.loss.ndim
((2, 3, 1792), 0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pali3_edu.config import EncDecConfig, ViTConfig, get_config
from pali3_edu.encdec import EncoderDecoder
from pali3_edu.tokens import IGNORE_INDEX
from pali3_edu.vit import ViT, sincos_2d_posemb


@dataclass
class PaLI3Config:
    """The two towers and the lengths of the text around them.

    ``vision`` is built without a pooling head (``pool="none"``): PaLI-3 uses every patch token.
    """

    vision: ViTConfig = field(default_factory=lambda: dataclasses.replace(get_config("vit", "tiny-cpu"), pool="none"))
    text: EncDecConfig = field(default_factory=lambda: get_config("encdec", "tiny-cpu"))
    max_prompt_len: int = 24  # prompt tokens, EOS included
    max_answer_len: int = 24  # answer tokens, EOS included
    # "sincos2d": add a fixed 2-D sine-cosine position code to the visual tokens after the
    # projector (not in the paper's model; it helps a tiny model read positions for boxes).
    visual_posemb: Literal["none", "sincos2d"] = "none"

    @classmethod
    def tiny(cls) -> PaLI3Config:
        return cls()

    @property
    def num_visual_tokens(self) -> int:
        return self.vision.num_patches


@dataclass
class PaLI3Output:
    """``logits`` ``(batch, target, vocab)``; ``loss`` (scalar) when labels were given;
    ``encoder_states`` ``(batch, patches + prompt, d_model)``; ``encoder_mask`` ``(batch,
    patches + prompt)`` (1 for every image token and every real prompt token)."""

    logits: Tensor
    encoder_states: Tensor | None = None
    encoder_mask: Tensor | None = None
    loss: Tensor | None = None


def patch_tokens(vit: ViT, pixel_values: Tensor) -> Tensor:
    """The ViT's output tokens before any pooling head: ``(batch, patches, width)``."""
    return vit(pixel_values).tokens


class PaLI3(nn.Module):
    """The full model: ``vit`` → ``projector`` → ``encdec`` (see the module docstring).

    Build it from a config (``PaLI3(PaLI3Config())``) or from trained parts
    (:meth:`from_parts`). ``tokenizer`` may be attached (``model.tokenizer = tok``) for
    :meth:`predict`; without one the course tokenizer is used.
    """

    def __init__(self, cfg: PaLI3Config | None = None, *,
                 parts: tuple[nn.Module, nn.Module, EncoderDecoder] | None = None):
        super().__init__()
        cfg = cfg or PaLI3Config()
        if cfg.visual_posemb not in ("none", "sincos2d"):
            raise ValueError(f"visual_posemb must be 'none' or 'sincos2d', got {cfg.visual_posemb!r}.")
        if parts is None:
            vit = ViT(cfg.vision)
            projector = nn.Linear(cfg.vision.width, cfg.text.d_model)
            encdec = EncoderDecoder(cfg.text)
        else:
            vit, projector, encdec = parts
        self.cfg = cfg
        self.vit, self.projector, self.encdec = vit, projector, encdec
        self.tokenizer: Any = None

    @classmethod
    def from_parts(cls, vit: ViT, projector: nn.Module, encdec: EncoderDecoder,
                   max_prompt_len: int = 24, max_answer_len: int = 24,
                   visual_posemb: Literal["none", "sincos2d"] = "none") -> PaLI3:
        """Join trained parts: a :class:`~pali3_edu.vit.ViT` (its pooling head, if any, is
        not used), any module mapping ViT width → ``d_model`` (PaLI-3: one ``nn.Linear``), and an
        :class:`~pali3_edu.encdec.EncoderDecoder`."""
        if not isinstance(vit, ViT):
            raise TypeError(f"vit must be a pali3_edu.vit.ViT, got {type(vit).__name__}.")
        if not isinstance(encdec, EncoderDecoder):
            raise TypeError(f"encdec must be a pali3_edu.encdec.EncoderDecoder, got {type(encdec).__name__}.")
        cfg = PaLI3Config(vision=vit.cfg, text=encdec.cfg, max_prompt_len=max_prompt_len,
                          max_answer_len=max_answer_len, visual_posemb=visual_posemb)
        return cls(cfg, parts=(vit, projector, encdec))

    # ---- the pieces --------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.vit.cfg.image_size

    def _check_pixels(self, pixel_values: Tensor) -> None:
        if not isinstance(pixel_values, Tensor):
            raise TypeError(
                f"pixel_values must be a tensor (batch, 3, {self.image_size}, {self.image_size}); got "
                f"{type(pixel_values).__name__}. For PIL images use model.predict, or "
                "pali3_edu.data.collate.images_to_batch(images, model.image_size).")
        if pixel_values.ndim == 4 and tuple(pixel_values.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"Images are {pixel_values.shape[-2]}x{pixel_values.shape[-1]} but the model works at "
                f"{self.image_size}x{self.image_size}: resize them with "
                f"pali3_edu.data.collate.images_to_batch(images, {self.image_size}), or change the "
                "model's resolution with model.set_image_size(n) (stage 2).")

    def visual_tokens(self, pixel_values: Tensor) -> Tensor:
        """``(batch, 3, H, W)`` in [-1, 1] → projected patch tokens ``(batch, patches, d_model)``."""
        self._check_pixels(pixel_values)
        tokens = self.projector(patch_tokens(self.vit, pixel_values))
        if self.cfg.visual_posemb == "sincos2d":
            g = self.vit.cfg.grid_size
            tokens = tokens + sincos_2d_posemb(g, g, tokens.shape[-1]).to(tokens)
        return tokens

    def embed_inputs(self, pixel_values: Tensor, input_ids: Tensor,
                     attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The encoder input: ``[visual tokens ; embedded prompt]`` ``(batch, P + S, d_model)`` and
        its keep-mask ``(batch, P + S)`` (image tokens are always kept)."""
        self._check_pixels(pixel_values)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, prompt_len), got shape {tuple(input_ids.shape)}.")
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"{pixel_values.shape[0]} images but {input_ids.shape[0]} prompts: each image needs "
                "exactly one prompt (repeat the image to ask it several things).")
        if input_ids.shape[1] > self.cfg.max_prompt_len:
            raise ValueError(
                f"Prompt of {input_ids.shape[1]} tokens is longer than max_prompt_len="
                f"{self.cfg.max_prompt_len}: shorten the prompt (or build the model with a larger "
                "max_prompt_len).")
        self.encdec._check_ids("input_ids", input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                             f"{tuple(input_ids.shape)}.")
        image = self.visual_tokens(pixel_values)
        text = self.encdec.embed_tokens(input_ids)
        embeds = torch.cat([image.to(text.dtype), text], dim=1)
        keep = torch.cat([torch.ones(image.shape[:2], dtype=attention_mask.dtype, device=image.device),
                          attention_mask.to(image.device)], dim=1)
        return embeds, keep

    # ---- training ----------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> PaLI3Output:
        """Teacher-forced forward pass.

        - ``pixel_values`` ``(batch, 3, H, W)`` float in [-1, 1] at the model's resolution;
        - ``input_ids`` ``(batch, S)`` the prompt (with its EOS), ``attention_mask`` ``(batch, S)``
          1 for real tokens, 0 for padding;
        - ``labels`` ``(batch, T)`` the answer, -100 where no loss is wanted; the decoder input is
          the labels shifted right unless ``decoder_input_ids`` is given.
        """
        embeds, keep = self.embed_inputs(pixel_values, input_ids, attention_mask)
        out = self.encdec(inputs_embeds=embeds, attention_mask=keep,
                          decoder_input_ids=decoder_input_ids, labels=labels)
        return PaLI3Output(logits=out.logits, loss=out.loss, encoder_states=out.encoder_states,
                           encoder_mask=keep)

    # ---- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None,
                 max_new_tokens: int | None = None, **kwargs: Any) -> Tensor:
        """Answer ids ``(batch, T)`` (no start token; padded after EOS). ``kwargs`` go to
        :func:`pali3_edu.generate.generate` (``strategy="beam"``, ``num_beams``, ...)."""
        from pali3_edu.generate import generate

        was_training = self.training
        self.eval()
        try:
            embeds, keep = self.embed_inputs(pixel_values, input_ids, attention_mask)
            return generate(self.encdec, inputs_embeds=embeds, attention_mask=keep,
                            max_new_tokens=max_new_tokens or self.cfg.max_answer_len, **kwargs)
        finally:
            self.train(was_training)

    def encode_prompts(self, prompts: Sequence[str], tokenizer: Any = None) -> dict[str, Tensor]:
        """Prompt strings → ``{"input_ids", "attention_mask"}`` ``(batch, S)``, with EOS, padded."""
        tok = tokenizer or self._tokenizer()
        if isinstance(prompts, str):
            prompts = [prompts]
        enc = tok.batch_encode(list(prompts), padding="longest", return_tensors=None)
        too_long = [p for p, ids in zip(prompts, enc["input_ids"]) if len(ids) > self.cfg.max_prompt_len]
        if too_long:
            raise ValueError(
                f"Prompt {too_long[0]!r} has more than max_prompt_len={self.cfg.max_prompt_len} "
                "tokens: shorten it.")
        return {k: torch.tensor(v) for k, v in enc.items()}

    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            from pali3_edu.tokenizer import course_tokenizer

            self.tokenizer = course_tokenizer()
        return self.tokenizer

    @torch.no_grad()
    def predict(self, images: Sequence[Any], prompts: Sequence[str] | str, max_new_tokens: int | None = None,
                batch_size: int = 64, **kwargs: Any) -> list[str]:
        """Answers to ``prompts`` about ``images`` (PIL images or ``(H, W, 3)`` arrays of any size;
        resized to the model's resolution). One prompt for all images, or one per image. Greedy
        decoding with the KV cache by default (``strategy="beam", num_beams=4`` for beam search).
        Detection answers can be read with :func:`pali3_edu.data.tasks.parse_detection`.
        """
        from pali3_edu.data.collate import images_to_batch

        images = list(images) if not hasattr(images, "size") or isinstance(images, (list, tuple)) else [images]
        if isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts: pass one prompt, or one per image.")
        tok = self._tokenizer()
        device = next(self.parameters()).device
        answers: list[str] = []
        for start in range(0, len(images), batch_size):
            pixels = images_to_batch(images[start:start + batch_size], self.image_size).to(device)
            enc = self.encode_prompts(prompts[start:start + batch_size], tok)
            ids = self.generate(pixels, enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                max_new_tokens=max_new_tokens, **kwargs)
            answers += [a.strip() for a in tok.batch_decode(ids.cpu(), skip_special_tokens=False)]
        return [clean_answer(a) for a in answers]

    # ---- resolution (stage 2) ----------------------------------------------------------------
    def set_image_size(self, image_size: int) -> None:
        """Change the model's resolution: the ViT's learned position grid is interpolated
        (PaLI-3 stage 2). The number of visual tokens grows with the square of the size."""
        self.vit.set_image_size(image_size)
        self.cfg = dataclasses.replace(self.cfg, vision=self.vit.cfg)


def clean_answer(text: str) -> str:
    """Decoded answer → plain text: drop the start/pad tokens and everything after EOS."""
    text = text.split("</s>")[0]
    return text.replace("<pad>", "").strip()


def answer_labels(tokenizer: Any, answers: Sequence[str], max_len: int) -> Tensor:
    """Answers → ``labels`` ``(batch, T)``: answer ids + EOS, padded with -100 (never scored)."""
    enc = tokenizer.batch_encode(list(answers), max_length=max_len, padding="longest")
    return enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)


__all__ = ["PaLI3", "PaLI3Config", "PaLI3Output", "answer_labels", "clean_answer", "patch_tokens"]
