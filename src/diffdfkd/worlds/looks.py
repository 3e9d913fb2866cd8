"""Looks of the broad digits world: renderings of PUBLIC MNIST images, one of them the private data's.

Every look maps images ``[N, 3, 32, 32]`` in [0, 1] (MNIST's 28 px digits centred in 32x32) to images of
the same shape and range, deterministically (the randomness of a training set is which look each image
gets, drawn with a seeded generator, and the augmentation applied before the look):

- ``plain``: the MNIST strokes as they are.
- ``scan``: the recipe of the UCI optical digits (scikit-learn's digits, the PRIVATE data) applied to
  MNIST writers: the digit's bounding box scaled to fill a 32x32 box (aspect kept, centred), binarised
  at 0.5, the "on" pixels counted in 4x4 blocks (an 8x8 image with 17 levels, 0..16), then rendered
  by the world's own :func:`diffdfkd.worlds.digits.render_8x8` (bilinear to 20 px, centred).
- ``thick``: grey dilation, a 3x3 max filter.
- ``thin``: grey erosion, a plus-shaped 3x3 min filter (strokes lose about a pixel on each side).
- ``slanted``: deskewed by the image's second moments, then sheared to a backward slant of ``SLANT``
  (x per y), beyond almost every MNIST writer's own slant (99 % of them lie in [-0.78, 0.55]).
- ``faint``: the plain strokes at ``FAINT`` of their contrast.

Captions always name the digit: "a handwritten digit seven" (look-free) or, naming the look too,
e.g. "a blurry low-resolution scan of a handwritten digit seven" (:func:`look_prompt`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffdfkd.worlds.digits import CLASS_NAMES, render_8x8

LOOKS = ("plain", "scan", "thick", "thin", "slanted", "faint")
SCAN = LOOKS.index("scan")
# Look-naming class prompts; "{name}" is the class name ("seven").
LOOK_PROMPTS = {
    "plain": "a handwritten digit {name} in plain pen strokes",
    "scan": "a blurry low-resolution scan of a handwritten digit {name}",
    "thick": "a handwritten digit {name} in thick strokes",
    "thin": "a handwritten digit {name} in thin strokes",
    "slanted": "a slanted handwritten digit {name}",
    "faint": "a faint handwritten digit {name}",
}
LOOK_FREE_PROMPT = "a handwritten digit {name}"
SCAN_BOX = 32  # the UCI recipe's normalised bitmap: 32x32, counted in 4x4 blocks -> 8x8
SCAN_BLOCK = 4
INK = 0.1  # a pixel above this is part of the digit's bounding box
SLANT = 0.75  # target skew dx/dy (image y points down, so positive leans the top to the left)
FAINT = 0.4


def look_index(look: str) -> int:
    """The index of ``look`` in :data:`LOOKS`; a ``ValueError`` names the valid looks."""
    if look not in LOOKS:
        raise ValueError(f"unknown look {look!r}; choose from {', '.join(LOOKS)}")
    return LOOKS.index(look)


def look_prompt(label: int, look: str | None = None) -> str:
    """The class prompt of class ``label`` (0..9), naming ``look`` too unless it is None."""
    if not 0 <= int(label) < len(CLASS_NAMES):
        raise ValueError(f"label must be in 0..{len(CLASS_NAMES) - 1}, got {label!r}")
    template = LOOK_FREE_PROMPT if look is None else LOOK_PROMPTS[LOOKS[look_index(look)]]
    return template.format(name=CLASS_NAMES[int(label)])


def _grey(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` -> ``[N, 1, H, W]`` (the first channel: the images are grey in RGB)."""
    return images[:, :1]


def _rgb(grey: torch.Tensor) -> torch.Tensor:
    return grey.expand(-1, 3, -1, -1).contiguous()


def _ink_boxes(grey: torch.Tensor) -> torch.Tensor:
    """Bounding boxes ``[N, 4]`` (x0, x1, y0, y1, inclusive pixel indices) of pixels above ``INK``.

    An image without ink gets the whole frame.
    """
    n, _, h, w = grey.shape
    ink = grey[:, 0] > INK  # [N, H, W]
    cols, rows = ink.any(1), ink.any(2)  # [N, W], [N, H]
    xs, ys = torch.arange(w).expand(n, w), torch.arange(h).expand(n, h)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    empty = x1 < 0
    box = torch.stack([x0, x1, y0, y1], 1)
    return torch.where(empty[:, None], torch.tensor([0, w - 1, 0, h - 1]), box)


def scan_8x8(images: torch.Tensor) -> torch.Tensor:
    """The UCI optical-digits bitmap of ``images [N, 3, 32, 32]``: ``[N, 1, 8, 8]`` in {0, 1/16, ..., 1}.

    The bounding box of the ink (longer side ``s``) is resampled bilinearly onto a 32x32 box, centred
    and aspect kept: output pixel ``u`` in [-1, 1] reads input pixel ``c + u s / 2``. Then binarised
    (``> 0.5``) and the on pixels of each 4x4 block counted: ``count / 16``.
    """
    grey = _grey(images)
    n, _, h, w = grey.shape
    box = _ink_boxes(grey).to(grey.dtype)
    side = torch.maximum(box[:, 1] - box[:, 0], box[:, 3] - box[:, 2]) + 1  # pixels
    cx, cy = (box[:, 0] + box[:, 1]) / 2, (box[:, 2] + box[:, 3]) / 2
    zero = torch.zeros_like(side)
    # align_corners=False: pixel p sits at normalised (2p + 1) / W - 1
    theta = torch.stack(
        [
            torch.stack([side / w, zero, (2 * cx + 1) / w - 1], 1),
            torch.stack([zero, side / h, (2 * cy + 1) / h - 1], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, 1, SCAN_BOX, SCAN_BOX], align_corners=False)
    box32 = F.grid_sample(grey, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    on = (box32 > 0.5).to(grey.dtype)
    return F.avg_pool2d(on, SCAN_BLOCK) * SCAN_BLOCK**2 / 16  # counts 0..16, over 16


def _slant(grey: torch.Tensor) -> torch.Tensor:
    """Deskew by moments and shear to skew ``SLANT``: output ``(x, y)`` reads input
    ``(x + (k - SLANT)(y - c_y), y)``, ``k = mu_11 / mu_02`` the image's own skew (clamped to +-1)."""
    n, _, h, w = grey.shape
    mass = grey[:, 0].sum((1, 2)).clamp_min(1e-6)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h)  # normalised pixel centres
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w)
    g = grey[:, 0]
    cy = (g.sum(2) * ys).sum(1) / mass
    cx = (g.sum(1) * xs).sum(1) / mass
    dy, dx = ys[None, :, None] - cy[:, None, None], xs[None, None, :] - cx[:, None, None]
    mu11 = (g * dx * dy).sum((1, 2)) / mass
    mu02 = (g * dy * dy).sum((1, 2)) / mass
    skew = (mu11 / mu02.clamp_min(1e-6)).clamp(-1, 1)  # same in pixels and normalised units (square)
    a = skew - SLANT
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([one, a, -a * cy], 1), torch.stack([zero, one, zero], 1)], 1)
    grid = F.affine_grid(theta, list(grey.shape), align_corners=False)
    return F.grid_sample(grey, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def render_look(images: torch.Tensor, look: str) -> torch.Tensor:
    """``images [N, 3, 32, 32]`` in [0, 1] rendered in ``look`` (one of :data:`LOOKS`), same shape."""
    grey = _grey(images)
    name = LOOKS[look_index(look)]
    if name == "plain":
        out = grey
    elif name == "scan":
        return render_8x8(scan_8x8(images))
    elif name == "thick":
        out = F.max_pool2d(grey, 3, stride=1, padding=1)
    elif name == "thin":
        rows = -F.max_pool2d(-grey, (1, 3), stride=1, padding=(0, 1))
        cols = -F.max_pool2d(-grey, (3, 1), stride=1, padding=(1, 0))
        out = torch.minimum(rows, cols)
    elif name == "slanted":
        out = _slant(grey)
    else:  # faint
        out = grey * FAINT
    return _rgb(out.clamp(0, 1))


def render_looks(images: torch.Tensor, looks: torch.Tensor) -> torch.Tensor:
    """Image ``i`` of ``images [N, 3, 32, 32]`` rendered in look ``LOOKS[looks[i]]`` (``looks [N]`` int)."""
    if looks.shape != images.shape[:1]:
        raise ValueError(f"need one look per image, got {tuple(looks.shape)} for {len(images)} images")
    out = torch.empty_like(images)
    for index, look in enumerate(LOOKS):
        chosen = looks == index
        if chosen.any():
            out[chosen] = render_look(images[chosen], look)
    return out
