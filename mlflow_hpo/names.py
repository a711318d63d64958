"""Every tag, param, metric and artifact name mlflow-hpo writes.

The public view of :mod:`mlflow_hpo._core.names`, where the core keeps them; the README's
"What gets logged" table is written from it.
"""

from mlflow_hpo._core.names import *  # noqa: F403
