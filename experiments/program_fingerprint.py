"""A fingerprint of the compiled fit's program, to show that a refactoring left it unchanged.

    PYTHONPATH=. python experiments/program_fingerprint.py float32 full 100000 16 16
    (cd OTHER_CHECKOUT && PYTHONPATH=. python /path/to/program_fingerprint.py float32 full ...)

Lowers ``emjax.gmm.fitting._fit_compiled`` for ``X`` of shape ``(N, D)`` (default options,
``n_init = 1``) to HLO text, strips instruction names and metadata, sorts the lines and prints
their count and SHA-1: equal fingerprints mean the same operations, whatever order or names
the tracer gave them. Works on checkouts before the pass plan too (it plans only if ``fit``
takes a ``plan``).
"""

from __future__ import annotations

import argparse
import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dtype", choices=["float32", "float64"])
    ap.add_argument("cov_type")
    ap.add_argument("n", type=int)
    ap.add_argument("d", type=int)
    ap.add_argument("k", type=int)
    args = ap.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from emjax.gmm import fitting

    X = jax.ShapeDtypeStruct((args.n, args.d), np.dtype(args.dtype))
    from emjax.gmm.options import FitOptions, InitialValues
    from emjax.gmm.plan import make_plan

    static = dict(options=FitOptions(args.k, args.cov_type, "kmeans", 1e-6, 100, 1, 10),
                  callback=None,
                  plan=make_plan(args.cov_type, args.dtype, args.n, args.d, args.k))
    call = (jax.random.key(0), None, InitialValues(), jnp.asarray(1e-3, args.dtype),
            jnp.asarray(-jnp.inf, args.dtype))
    text = fitting._fit_compiled.lower(X, *call, **static).as_text(dialect="hlo")
    text = re.sub(r", metadata=\{[^}]*\}", "", text)
    lines = sorted(re.sub(r"%[\w.\-]+", "%", line.strip()) for line in text.splitlines()
                   if line.strip() and not line.strip().startswith("#"))
    digest = hashlib.sha1("\n".join(lines).encode()).hexdigest()
    print(args.dtype, args.cov_type, args.n, args.d, args.k, len(lines), digest)


if __name__ == "__main__":
    main()
