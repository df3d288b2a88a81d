"""cuproi.jax on two devices: jax.pmap, jax.shard_map with jax.grad (under the default
check_vma=True) and jax.jit of sharded arrays give the results of the array functions.

JAX takes its device count from XLA_FLAGS when it starts, and other test files may have
started it already in this process: the checks run in a subprocess with two host devices
(``--xla_force_host_platform_device_count=2``), which prints one line per check passed.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cuproi

jax = pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    import cuproi
    import cuproi.jax as cj

    try:
        shard_map = jax.shard_map
    except AttributeError:  # older JAX
        from jax.experimental.shard_map import shard_map

    assert jax.device_count() == 2
    rng = np.random.default_rng(0)
    K = 6  # boxes per device, on its 2 images
    x = rng.standard_normal((2, 2, 3, 10, 12)).astype(np.float32)  # (device, N, C, H, W)
    corner = rng.uniform(-1, 5, (2, K, 2))
    size = rng.uniform(1, 6, (2, K, 2))
    index = np.broadcast_to(np.repeat([0.0, 1.0], K // 2)[:, None], (2, K, 1))
    b = np.concatenate([index, corner, corner + size], axis=2).astype(np.float32)
    offset = rng.uniform(-1, 1, (2, K, 2, 2, 2)).astype(np.float32)
    mask = rng.uniform(0.2, 1, (2, K, 1, 2, 2)).astype(np.float32)
    g = rng.standard_normal((2, K, 3, 2, 2)).astype(np.float32)
    levels = [rng.standard_normal((2, 2, 3, 16, 16)).astype(np.float32), x]
    lb = b.copy()
    lb[..., 1:] *= 6  # boxes of 6 to 66 pixels on levels of strides 1 and 2
    mesh = jax.make_mesh((2,), ("d",))

    def put(a, spec=P("d")):
        return jax.device_put(a, NamedSharding(mesh, spec))

    def split(f):
        return shard_map(f, mesh=mesh, in_specs=P("d"), out_specs=P("d"))

    def deform_loss(x, b, o, m, g):
        return jnp.sum(cj.deform_roi_pool(x, b, o, 2, 1.0, 2, 0.1, m) * g)

    def deform_grads(x, b, o, m, g):
        gx, go, gm = cuproi.deform_roi_pool_backward(g, x, b, o, 2, 1.0, 2, 0.1, mask=m)
        return gx, cuproi.deform_roi_pool_box_backward(g, x, b, o, 2, 1.0, 2, 0.1, mask=m), go, gm

    def check(got, i, want):
        for a, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(a)[i], w)

    grad = jax.grad(deform_loss, argnums=(0, 1, 2, 3))
    got = jax.pmap(grad)(x, b, offset, mask, g)
    for i in range(2):
        check(got, i, deform_grads(x[i], b[i], offset[i], mask[i], g[i]))
    print("pmap")

    # Every array split over the devices: each computes its shard's gradients.
    local = split(lambda *a: [t[None] for t in grad(*(u[0] for u in a))])
    got = jax.jit(local)(*map(put, (x, b, offset, mask, g)))
    for i in range(2):
        check(got, i, deform_grads(x[i], b[i], offset[i], mask[i], g[i]))
    print("shard_map")

    # Levels split over the devices, a list in and a list of gradients out.
    def level_loss(levels, b, g):
        out = cj.multi_scale_roi_align(levels, b, 2, [1.0, 0.5], 2, True, 16, 4)
        return jnp.sum(out * g)

    def local_level_grad(levels, b, g):
        return [t[None] for t in jax.grad(level_loss)([v[0] for v in levels], b[0], g[0])]

    got = jax.jit(split(local_level_grad))([put(v) for v in levels], put(lb), put(g))
    for i in range(2):
        args = ([v[i].shape for v in levels], 2, [1.0, 0.5], 2, True, 16, 4)
        check(got, i, cuproi.multi_scale_roi_align_backward(g[i], lb[i], *args))
    print("shard_map levels")

    # Features shared by the devices, boxes split: the features' gradient is the sum of the
    # devices' (psum, in another order than one call's sum), the boxes' each device's own.
    # The experimental shard_map of older JAX checks replication, which cannot see the
    # features' gradient as replicated.
    if hasattr(jax, "shard_map"):
        shared = shard_map(
            jax.grad(lambda x, b, g: jnp.sum(cj.roi_align(x, b, 2, 1.0, 2, True) * g), (0, 1)),
            mesh=mesh,
            in_specs=(P(), P("d"), P("d")),
            out_specs=(P(), P("d")),
        )
        boxes, grads = b.reshape(2 * K, 5), g.reshape(2 * K, 3, 2, 2)
        gx, gb = jax.jit(shared)(put(x[0], P()), put(boxes), put(grads))
        want = cuproi.roi_align_backward(grads, boxes, x[0].shape, 2, 1.0, 2, True)
        np.testing.assert_allclose(np.asarray(gx), want, rtol=1e-6, atol=1e-6)
        want = cuproi.roi_align_box_backward(grads, x[0], boxes, 2, 1.0, 2, True)
        np.testing.assert_array_equal(np.asarray(gb), want)
        print("shard_map shared features")

    # jit of arrays sharded along the batch: XLA gathers them, every device computes the op.
    features = x.reshape(4, 3, 10, 12)
    boxes = np.concatenate([b[0], b[1] + np.array([2, 0, 0, 0, 0], np.float32)])
    def loss(x, b):
        out = cj.roi_align(x, b, 2, 1.0, 2, True)
        return out.sum(), out

    gx, out = jax.jit(jax.grad(loss, has_aux=True))(put(features), put(boxes))
    want = cuproi.roi_align(features, boxes, 2, 1.0, 2, True)
    np.testing.assert_array_equal(np.asarray(out), want)
    want = cuproi.roi_align_backward(np.ones_like(want), boxes, features.shape, 2, 1.0, 2, True)
    np.testing.assert_array_equal(np.asarray(gx), want)
    print("sharded jit")
    """
)


def test_pmap_shard_map_and_sharded_jit():
    flags = "--xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    root = Path(cuproi.__file__).parents[1]  # this checkout's (or installation's) cuproi
    run = dict(env=env, cwd=root, capture_output=True, text=True, timeout=300)
    result = subprocess.run([sys.executable, "-c", SCRIPT], **run)
    assert result.returncode == 0, result.stderr
    checks = ["pmap", "shard_map", "shard_map levels", "shard_map shared features", "sharded jit"]
    if not hasattr(jax, "shard_map"):  # older JAX: see the script
        checks.remove("shard_map shared features")
    assert result.stdout.split("\n")[:-1] == checks
