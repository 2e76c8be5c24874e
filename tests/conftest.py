import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("MITOOLS_NO_PROGRESS", "1")
