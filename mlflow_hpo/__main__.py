"""``python -m mlflow_hpo``: the same CLI as the ``mlflow-hpo`` command."""

from mlflow_hpo.cli import cli

if __name__ == "__main__":
    cli(prog_name="mlflow-hpo")
