"""Test configuration: single-threaded torch, here and in the subprocesses tests start (the suite's problems are
small; on a 2-core CI machine thread oversubscription makes Hessian-vector products many times slower)."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")   # also for the subprocesses tests start (pyrod.threads keeps it)

import torch  # noqa: E402

torch.set_num_threads(1)
