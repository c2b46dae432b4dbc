"""Prompt encoding for the static decoder: the processor once per distinct prompt, the vision tower once per image.

A localization sweep asks for the same (prompt, image) in every row of a probe pair (the plain answer and 28 swaps), so
encoding each row again would run the image processor and the vision tower 29 times for one image. ``PromptEncoder``:

* runs the processor once per distinct request (chat text + image contents) and keeps its text-side tensors (input
  ids, masks, token types, image grids) on the CPU;
* runs the vision tower (``model.get_image_features``, its window attention batched by
  :mod:`frankeneval.engine.vision_attention`, no autograd) once per distinct image content, for the images of a batch
  not seen before in forwards of at most ``MAX_PATCHES`` patches, and keeps the merged image features on the
  model's device (least recently used first out, ``max_images``);
* builds a batch as the processor would (left padding), plus ``inputs_embeds`` = token embeddings with the image
  features written at the image-token positions -- what the model's own forward computes from ``pixel_values``.

Weights and processor settings are fixed for one ``Generator``, so a cached encoding is the encoding. The cache only
changes *which* batch computed an image's features (in bf16 a batch's composition moves the last bits; in float32
the tests show the same tokens as encoding every row).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from frankeneval.engine.vision_attention import batched_windows
from frankeneval.errors import FrankenevalError


def image_key(image) -> str:
    """Content key of a PIL image (mode, size and pixels)."""
    h = hashlib.sha1()
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def to_rgb(image):
    """The image in RGB (the same object when it already is)."""
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image


def visual_token_count(processor, size: tuple[int, int]) -> int:
    """The visual tokens ``processor`` gives one image of ``size`` (PIL's ``(width, height)``), without processing
    it: the image processor's own patch count for that size (Qwen2.5-VL: ``smart_resize`` within its min / max
    pixels, 14 px patches), merged ``merge_size`` x ``merge_size`` -- ``image_grid_thw.prod() // merge_size**2`` of
    the processed image."""
    image_processor = getattr(processor, "image_processor", processor)
    width, height = (int(x) for x in size)
    count = getattr(image_processor, "get_number_of_image_patches", None)
    if count is None:  # an image processor without it: process a blank image of that size
        from PIL import Image

        grid = image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")["image_grid_thw"]
        patches = int(grid.prod())
    else:
        patches = int(count(height, width))
    return patches // int(getattr(image_processor, "merge_size", 2)) ** 2


class PromptEncoder:
    """Batches of (chat text, images) -> processor-style inputs + ``inputs_embeds``, with the caches above."""

    MAX_PATCHES = 65536  # vision-tower patches per forward (256 images of 336 px); more images run in several forwards

    def __init__(self, model, processor, *, pad_id: int, max_requests: int = 8192, max_images: int = 2048,
                 phase: Callable[[str], object] | None = None):
        self.model = model
        self.phase = phase or (lambda name: nullcontext())  # times "processor" / "vision" (Generator.profile)
        self.processor = processor
        self.pad_id = int(pad_id)
        self.max_requests = max_requests
        self.max_images = max_images
        self._rows: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.image_token_id = getattr(model.config, "image_token_id", None)

    def clear(self) -> None:
        self._rows.clear()
        self._features.clear()

    # -------------------------------------------------------------------------------------------- per request
    def _row(self, text: str, images: list, keys: tuple[str, ...], patches: dict) -> dict[str, torch.Tensor]:
        """The processor's text-side tensors of one request (cached); a processor run also leaves each image's
        patches in ``patches`` (image key -> (pixel values, grid)) for the images the vision tower has not seen."""
        key = (text, keys)
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
            return row
        with self.phase("processor"):
            out = self.processor(text=[text], images=images or None, return_tensors="pt")
        row = {k: v for k, v in out.items() if k != "pixel_values" and torch.is_tensor(v)}
        if images:
            sizes = out["image_grid_thw"].prod(-1).tolist()
            for k, pix, grid in zip(keys, torch.split(out["pixel_values"], sizes), out["image_grid_thw"]):
                if k not in self._features:
                    patches[k] = (pix, grid[None])
        self._rows[key] = row
        while len(self._rows) > self.max_requests:
            self._rows.popitem(last=False)
        return row

    # -------------------------------------------------------------------------------------------- per image
    def _encode_images(self, images: list, keys: list[str], patches: dict) -> None:
        """Vision-tower features of the images not cached yet (forwards of at most ``MAX_PATCHES`` patches, without
        autograd); ``patches``: pixel values the processor already made for some of them."""
        todo: dict[str, object] = {}
        for im, k in zip(images, keys):
            if k not in self._features and k not in todo:
                todo[k] = im
        if not todo:
            return
        missing = [k for k in todo if k not in patches]
        if missing:  # a prompt seen before whose image features were evicted: process those images again
            with self.phase("processor"):
                pix = self.processor.image_processor(images=[todo[k] for k in missing], return_tensors="pt")
            sizes = pix["image_grid_thw"].prod(-1).tolist()
            for k, p, grid in zip(missing, torch.split(pix["pixel_values"], sizes), pix["image_grid_thw"]):
                patches[k] = (p, grid[None])
        groups: list[list[str]] = [[]]
        n_patches = 0
        for k in todo:
            size = patches[k][0].shape[0]
            if groups[-1] and n_patches + size > self.MAX_PATCHES:
                groups.append([])
                n_patches = 0
            groups[-1].append(k)
            n_patches += size
        with self.phase("vision"):
            for group in groups:
                self._vision_forward(group, patches)
        while len(self._features) > self.max_images:
            self._features.popitem(last=False)

    @torch.no_grad()
    def _vision_forward(self, keys: list[str], patches: dict) -> None:
        """One vision-tower forward for these images; their merged features go into the cache."""
        device = self.model.device
        pixel_values = torch.cat([patches[k][0] for k in keys]).to(device)
        grid = torch.cat([patches[k][1] for k in keys]).to(device)
        with batched_windows(self.model):
            feats = self.model.get_image_features(pixel_values, grid)
        feats = getattr(feats, "pooler_output", feats)
        if torch.is_tensor(feats):  # one tensor for all images: split by each image's merged token count
            merge = getattr(getattr(self.model.config, "vision_config", None), "spatial_merge_size", 2)
            feats = torch.split(feats, (grid.prod(-1) // merge**2).tolist())
        for k, f in zip(keys, feats):
            self._features[k] = f

    # -------------------------------------------------------------------------------------------- batch
    def encode(self, texts: Sequence[str], images: Sequence[list]) -> tuple[dict[str, torch.Tensor], list, list]:
        """``(inputs, features, keys)`` for one batch: ``inputs`` holds the processor's per-row tensors, left-padded,
        and ``image_grid_thw`` (no pixel values), on the model's device; ``features[r]``: row ``r``'s image features
        (its images' merged tokens in order, or None); ``keys[r]``: what row ``r``'s prompt is made of (chat text and
        image contents; equal keys, equal prompts). :meth:`embeds` turns rows of features into ``inputs_embeds``."""
        images = [[to_rgb(im) for im in row] for row in images]
        known: dict[int, str] = {}  # a sweep passes one image object to many rows: hash it once per call

        def key_of(im) -> str:
            if id(im) not in known:
                known[id(im)] = image_key(im)
            return known[id(im)]

        keys = [tuple(key_of(im) for im in row) for row in images]
        patches: dict = {}
        rows = [self._row(t, row, k, patches) for t, row, k in zip(texts, images, keys)]
        flat_keys = [k for row in keys for k in row]
        self._encode_images([im for row in images for im in row], flat_keys, patches)
        features = []
        for row in keys:
            for k in row:
                self._features.move_to_end(k)
            features.append(torch.cat([self._features[k] for k in row]) if row else None)
        length = max(r["input_ids"].shape[1] for r in rows)
        device = self.model.device
        inputs: dict[str, torch.Tensor] = {}
        names = [n for n in dict.fromkeys(n for r in rows for n in r) if n != "image_grid_thw"]
        for name in names:
            parts = []
            for r in rows:
                t = r.get(name)
                if t is None and name != "mm_token_type_ids":
                    raise FrankenevalError(f"the processor gave {name!r} for some prompts and not for others")
                if t is None:  # a text-only row: no multimodal tokens
                    t = torch.zeros_like(r["input_ids"])
                if t.dim() != 2 or t.shape[0] != 1:
                    raise FrankenevalError(f"cannot batch the processor output {name!r} of shape {tuple(t.shape)}")
                fill = self.pad_id if name == "input_ids" else 0
                pad = torch.full((1, length - t.shape[1]), fill, dtype=t.dtype)
                parts.append(torch.cat([pad, t], dim=1))  # left padding, as the processor pads
            inputs[name] = torch.cat(parts).to(device)
        grids = [r["image_grid_thw"] for r in rows if "image_grid_thw" in r]
        if grids:
            inputs["image_grid_thw"] = torch.cat(grids).to(device)
        return inputs, features, [(t, k) for t, k in zip(texts, keys)]

    def embeds(self, input_ids: torch.Tensor, features: list,
               embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Token embeddings of ``input_ids`` with each row's image features at its image-token positions (what the
        model's forward does with ``pixel_values``)."""
        with torch.no_grad():
            return self._embeds(input_ids, features, embed)

    def _embeds(self, input_ids, features, embed):
        out = embed(input_ids)
        present = [f for f in features if f is not None]
        if not present:
            return out
        feats = torch.cat(present).to(out.device, out.dtype)
        mask = input_ids == self.image_token_id
        if int(mask.sum()) != feats.shape[0]:
            raise FrankenevalError(f"{int(mask.sum())} image tokens in the prompts, {feats.shape[0]} image features")
        return out.masked_scatter(mask[..., None].expand_as(out), feats)
