"""cuproi.jax at interpreter exit: a computation still pending when the script ends completes.

JAX runs a callback whenever the computation reaches it, possibly while the interpreter shuts
down. The callback must then find cuproi's NumPy backend imported already: importing it then
fails (its thread pool's module registers an exit hook: "can't register atexit after
shutdown"). The script below makes that moment certain, in a subprocess: a computation spread
over two CPU devices is dispatched asynchronously, and its first callback waits for the main
thread to end before cuproi's callback runs; an exit hook then reads the result.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent(
    """
    import atexit
    import sys
    import threading

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    import cuproi.jax

    assert "cupy" not in sys.modules, "import cuproi.jax imported cupy"


    def after_exit(x):
        threading.main_thread().join()  # returns once the interpreter is shutting down
        return x


    @jax.jit
    def pooled(x, boxes):
        x = jax.pure_callback(after_exit, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return cuproi.jax.roi_align(x, boxes, 2)


    mesh = jax.make_mesh((2,), ("batch",))
    x = jax.device_put(jnp.ones((2, 3, 8, 8)), NamedSharding(mesh, PartitionSpec("batch")))
    boxes = jnp.array([[0, 0, 0, 4, 4], [1, 2, 2, 6, 6]], jnp.float32)
    out = pooled(x, boxes)  # dispatched; waits in after_exit until the script has ended
    atexit.register(lambda: print("sum", float(np.asarray(out).sum())))
    """
)


def test_a_computation_pending_at_exit_completes():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert "can't register atexit after shutdown" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0 and result.stdout.split() == ["sum", "24.0"], (
        result.stdout,
        result.stderr,
    )
