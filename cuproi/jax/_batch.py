"""``jax.vmap`` of an op: one call of cuproi for the whole batch, not one per element.

Under ``jax.vmap`` a callback gets its arrays with the batch axes in front (JAX's
``vmap_method="expand_dims"``: the full size for a batched argument, 1 for one shared by the
batch), and its results are expected with them in front too. Every array function of cuproi
takes a batch of images and boxes that name their image, so a batch of calls is one call:
:func:`fold` merges the batch axes into the first axis of each array (images, boxes, per-box
arrays), renumbering each element's boxes to its own images, and the results come out of the
call with the batch merged into their first axis (the boxes', or the images'), which
:func:`fold_result` and :func:`unfold` split again. The arrays are known by the names of the
array functions' parameters.

Features shared by the whole batch (batch axis 1) are not repeated when the results are per
box (forwards, box gradients): every element's boxes read the same images. A gradient for the
features has one per element, so then each element gets its own copy of them.
"""

import math

import numpy as np

from cuproi import _validate

_FEATURES = ("input", "features")  # per image (``features``: a list of levels)
_PER_BOX = ("grad_output", "offset", "mask", "argmax")  # (K, ...), four dimensions each


def _lead(array, ndim):
    """The batch axes in front of an array of ``ndim`` dimensions."""
    return tuple(array.shape[: array.ndim - ndim])


def _merged(xp, array, batch, ndim):
    """``array`` with its batch axes broadcast to ``batch`` and merged into its first axis."""
    shape = tuple(array.shape[array.ndim - ndim :])
    full = xp.broadcast_to(array, batch + shape)
    return full.reshape((math.prod(batch) * shape[0], *shape[1:]))


def _leads(arrays):
    for name, value in arrays.items():
        if value is None:
            continue
        if name == "features":
            yield from (_lead(level, 4) for level in value)
        else:
            yield _lead(value, 2 if name == "boxes" else 4)


def _images(arrays, options):
    """Images per element: the features' batch, or the ``input_shape`` of a backward."""
    if arrays.get("input") is not None:
        return arrays["input"].shape[-4]
    if arrays.get("features") is not None:
        return arrays["features"][0].shape[-4]
    shape = options.get("input_shape") or options["input_shapes"][0]
    return shape[0]


def _shared(function, arrays):
    """Whether the whole batch reads the same features (batch axes of size 1), one copy of them.

    Not for an input gradient, which each element has of its own.
    """
    if function.endswith("_backward") and not function.endswith("_box_backward"):
        return False
    levels = [arrays["input"]] if arrays.get("input") is not None else arrays.get("features", [])
    return all(math.prod(_lead(x, 4)) == 1 for x in levels or [])


def _renumbered(xp, function, boxes, images, count, options):
    """(count * K, width) boxes with element ``b``'s batch indices moved to its own images.

    cuproi's box checks run first, against one element's ``images`` (a bad index must not land
    on a neighbour's image): on the CPU they raise cuproi's error, naming the row of the boxes
    of all elements stacked; on a GPU they turn bad rows into rows of batch index -1, which
    stay so and give zeros, as on a GPU without ``jax.vmap``.
    """
    rotated = function.startswith("roi_align_rotated")
    check = _validate.rotated_boxes if rotated else _validate.boxes
    rois = check(xp, boxes, images, options.get("spatial_scale"), boxes.dtype)
    index = rois[:, 0]
    per_element = len(rois) // count if count else 0
    first = xp.repeat(xp.arange(count, dtype=rois.dtype) * images, per_element)
    moved = xp.where(index >= 0, index + first, index)
    return xp.concatenate([moved[:, None], rois[:, 1:]], axis=1)


def fold(xp, function, arrays, options):
    """The call of ``function`` on ``arrays`` with their batch axes merged, as one call.

    Parameters
    ----------
    xp : module
        NumPy or CuPy, the arrays' module.
    function : str
        The name of cuproi's array function.
    arrays, options : dict
        Its array arguments (batch axes in front) and its other arguments, by name.

    Returns
    -------
    arrays, options : dict
        The arguments of the merged call (``input_shape`` and ``input_shapes`` with the
        merged batch of images).
    batch : tuple of int
        The batch axes; empty outside ``jax.vmap`` (then nothing was changed).
    """
    leads = list(_leads(arrays))
    batch = tuple(np.broadcast_shapes(*leads)) if leads else ()
    if not batch:
        return arrays, options, ()
    count = math.prod(batch)
    shared = _shared(function, arrays)
    images = _images(arrays, options)
    merged = {}
    for name, value in arrays.items():
        if value is None:
            merged[name] = None
        elif name in _FEATURES:
            levels = value if name == "features" else [value]
            if shared:
                levels = [x.reshape(x.shape[-4:]) for x in levels]
            else:
                levels = [_merged(xp, x, batch, 4) for x in levels]
            merged[name] = levels if name == "features" else levels[0]
        elif name == "boxes":
            rows = _merged(xp, value, batch, 2)
            merged[name] = (
                rows if shared else _renumbered(xp, function, rows, images, count, options)
            )
        elif name in _PER_BOX:
            merged[name] = _merged(xp, value, batch, 4)
        else:
            raise ValueError(f"cuproi.jax: no batch rule for argument {name!r}")
    options = dict(options)
    if "input_shape" in options:
        n, *rest = options["input_shape"]
        options["input_shape"] = (count * n, *rest)
    if "input_shapes" in options:
        options["input_shapes"] = tuple((count * n, *rest) for n, *rest in options["input_shapes"])
    return merged, options, batch


def fold_result(array, batch):
    """A result buffer (batch axes in front) as the merged call writes it: a view."""
    shape = array.shape[len(batch) :]
    return array.reshape((math.prod(batch) * shape[0], *shape[1:])) if batch else array


def unfold(array, batch):
    """A result of the merged call with the batch axes in front again."""
    if not batch:
        return array
    count = math.prod(batch)
    return array.reshape((*batch, array.shape[0] // count, *array.shape[1:]))
