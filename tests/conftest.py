import os

# pytest runs with -n 2 on 2 cores: one BLAS/OpenMP thread per worker avoids oversubscription,
# which otherwise makes small linear algebra 100x slower. Must be set before numpy/torch load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MITOOLS_NO_PROGRESS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
