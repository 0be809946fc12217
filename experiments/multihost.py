"""Multi-process (multi-host) data-parallel EM: run one copy per process.

On one machine (two CPU processes talking through gloo)::

    python experiments/multihost.py --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 0 &
    python experiments/multihost.py --coordinator 127.0.0.1:12355 --num-processes 2 --process-id 1

On a cluster, run the same command on every host with the coordinator's ``host:port`` and that
host's rank (on Slurm, Open MPI or Cloud TPU, ``jax.distributed.initialize()`` with no arguments
detects all three). Each process reads only its own rows (here: a slice of a generated data set;
in practice, its own files), and every process gets the same fitted mixture.
"""

import argparse
import sys
import time

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/experiments/", 1)[0])

from emjax.gmm import (
    distributed,  # noqa: E402
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--coordinator", required=True, help="host:port of process 0")
    ap.add_argument("--num-processes", type=int, required=True)
    ap.add_argument("--process-id", type=int, required=True)
    ap.add_argument("--n-samples", type=int, default=100_000)
    ap.add_argument("--n-components", type=int, default=4)
    args = ap.parse_args()
    # CPU collectives across processes: gloo (jax 0.10's default, set for clarity).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes, process_id=args.process_id)
    rank, size = jax.process_index(), jax.process_count()
    # Every process generates the same data set and keeps its own contiguous block of rows.
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(args.n_components, 5))
    X = (centres[rng.integers(0, args.n_components, args.n_samples)]
         + rng.normal(size=(args.n_samples, 5))).astype(np.float32)
    mine = np.array_split(X, size)[rank]
    t = time.perf_counter()
    res = distributed.fit(mine, args.n_components, key=jax.random.key(0), n_init=2)
    jax.block_until_ready(res)
    print(f"process {rank}/{size}: {mine.shape[0]} local rows of {args.n_samples}, "
          f"{jax.device_count()} devices, n_iter={int(res.n_iter)}, "
          f"converged={bool(res.converged)}, log-likelihood={float(res.log_likelihood):.6f}, "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
