"""Test configuration: single-threaded torch (the suite's problems are small; on a 2-core CI machine
thread oversubscription makes Hessian-vector products many times slower)."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
