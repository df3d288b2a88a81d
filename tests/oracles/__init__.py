"""Float64 scalar-loop oracles, one module per public op, written from the published
semantics of the peer libraries (torchvision, mmcv, detectron2, PreciseRoIPooling), NOT from
cuproi, so that they do not share its bugs. Deliberately slow: plain Python loops, numpy only,
values accumulated in float64; small inputs only. ``sampling`` holds the scalar helpers of the
Caffe2 RoI Align family (its geometry, samples and bilinear rule) and the two loops of every op
linear in its features: an op module lists its bins, each ``(k, b, ph, pw, taps, count)``, and
``gather`` sums them (the forward) or ``scatter`` spreads a gradient over them (its exact
transpose). ``calculus`` holds the box-coordinate calculus (max mode, box gradients) and finite
differences, ``position_sensitive`` the channel map of R-FCN. tests/test_reference.py pins them.

Conventions (shared by every function):

* ``x`` is a float array (N, C, H, W); ``rois`` is (K, 5) with rows
  ``[batch_index, x1, y1, x2, y2]`` in image coordinates; ``output_size`` is an
  int or a pair (PH, PW).  Results are float64 numpy arrays (argmax is int64).
* ``coord_dtype`` (default float64) is the dtype in which the *coordinate
  arithmetic* is evaluated.  The peers do it in the feature dtype; for float32
  features the implementation under test does it in float32.  Each roi
  coordinate, ``spatial_scale`` (and ``gamma``, offsets) is cast to
  ``coord_dtype`` and every coordinate expression is evaluated with numpy
  scalars of that dtype in exactly the documented operation order, so each
  binary operation rounds to ``coord_dtype``.  Interpolation weights and all
  value accumulation are then done in float64 (the coordinate is cast to float64
  first).
* ``(int)`` is truncation toward zero, ``round`` is C ``round`` (half away from
  zero, not numpy's banker's rounding).
"""
