"""Every tag, param, metric and artifact name that mlflow-hpo writes.

This is the single source of truth for the README's "What gets logged" table.
Backends import names from here and never spell them inline, so the UI columns a
user filters on stay identical whichever tuning library produced the runs.
"""

from __future__ import annotations

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

# --- tags on both study (parent) and trial (child) runs ---
TAG_ROLE = "mlflow_hpo.role"
ROLE_STUDY = "study"
ROLE_TRIAL = "trial"
TAG_BACKEND = "mlflow_hpo.backend"
TAG_STUDY_KEY = "mlflow_hpo.study_key"
TAG_STUDY_NAME = "mlflow_hpo.study_name"
TAG_PARENT_RUN_ID = MLFLOW_PARENT_RUN_ID  # "mlflow.parentRunId": makes the UI nest trials

# --- tags on trial runs ---
TAG_TRIAL_KEY = "mlflow_hpo.trial_key"
TAG_STATE = "mlflow_hpo.state"
# Small JSON records go in tags when they fit MLflow's tag limit (one store call saved per
# file); a larger record becomes the artifact of the same name (``ARTIFACT_*``).
TAG_HYPERPARAMETERS = "mlflow_hpo.hyperparameters"  # typed values, distributions, backend
TAG_OUTPUT_EXCEPTIONS = "mlflow_hpo.output_exceptions"  # JSON list of skipped layers
TAG_OWNER = "mlflow_hpo.owner"  # host:pid:nonce of the process that writes the run
TAG_END_REASON = "mlflow_hpo.end_reason"  # why a run was ended on resume or sync
TAG_ERROR_CLASS = "mlflow_hpo.error_class"
TAG_PRUNED_STEP = "mlflow_hpo.pruned_step"
TAG_MODEL_URI = "mlflow_hpo.model_uri"
TAG_DATETIME_START = "mlflow_hpo.datetime_start"
TAG_DATETIME_COMPLETE = "mlflow_hpo.datetime_complete"
TAG_USER_ATTR_PREFIX = "user_attr."
TAG_BEST_STEP = "mlflow_hpo.best_step"  # Keras Tuner: the epoch its checkpoint comes from
TAG_CONTINUES_RUN_ID = "mlflow_hpo.continues_run_id"  # Hyperband: run of tuner/trial_id
TAG_KT_STATUS = "keras_tuner.status"  # COMPLETED, FAILED or INVALID, as Keras Tuner says
TAG_KT_TUNER_ID = "keras_tuner.tuner_id"  # which (distributed) tuner ran the trial
TAG_FAIL_REASON = "mlflow_hpo.fail_reason"  # Hyperopt: the reason of a STATUS_FAIL result
TAG_HYPEROPT_STATUS = "hyperopt.status"  # the result's status, as Hyperopt says
TAG_RAY_TRIAL_ID = "ray_tune.trial_id"  # Ray Tune's own id of the trial
TAG_RAY_STOPPED_AT = "ray_tune.stopped_at_iteration"  # a scheduler stopped it there

# --- tags on study runs ---
TAG_DIRECTIONS = "mlflow_hpo.directions"
TAG_OBJECTIVES = "mlflow_hpo.objectives"
TAG_BEST_TRIAL_RUN_ID = "mlflow_hpo.best_trial_run_id"
TAG_BEST_TRIAL_NUMBER = "mlflow_hpo.best_trial_number"
TAG_BEST_PARAM_PREFIX = "mlflow_hpo.best_param."
TAG_LOGGING_WARNINGS = "mlflow_hpo.logging_warnings"  # total over every worker
TAG_WORKER_WARNINGS_PREFIX = "mlflow_hpo.logging_warnings."  # .<host>-<pid>: one worker's
TAG_PARETO_TRIALS = "mlflow_hpo.pareto_trials"
TAG_LEFT_OUT = "mlflow_hpo.left_out_candidates"  # scikit-learn, when max_child_runs cuts
TAG_KT_TUNER = "keras_tuner.tuner"  # the tuner class
TAG_KT_PROJECT_DIR = "keras_tuner.project_dir"
TAG_RAY_EXPERIMENT = "ray_tune.experiment_path"  # where Ray Tune keeps the experiment
TAG_SK_ESTIMATOR = "sklearn.estimator"  # scikit-learn search: the searched estimator's class
TAG_SK_SAMPLER = "sklearn.sampler"  # tracked_sampler: the sampler's class

# --- params ---
PARAM_TRIAL_NUMBER = "trial_number"

# --- metrics on trial runs ---
METRIC_N_OUTPUT_EXCEPTIONS = "n_output_exceptions"
METRIC_DURATION = "trial_duration_s"
METRIC_INTERMEDIATE = "intermediate_value"
METRIC_EPOCH_PREFIX = "epoch_"  # a Keras epoch metric named like an objective: epoch_<name>
METRIC_EXECUTION_PREFIX = "execution_{index}/"  # Keras Tuner executions_per_trial > 1

# --- metrics on study runs ---
METRIC_BEST_PREFIX = "best_"  # best_<objective name>
METRIC_N_TRIALS_PREFIX = "n_trials_"  # n_trials_complete, n_trials_pruned, ...

# --- artifacts ---
ARTIFACT_HYPERPARAMETERS = "hyperparameters.json"
ARTIFACT_OUTPUT_EXCEPTIONS = "output_exceptions.json"
ARTIFACT_ERROR = "error.txt"
ARTIFACT_TRIALS = "trials.csv"
ARTIFACT_CV_RESULTS = "cv_results.csv"  # scikit-learn: cv_results_ plus run_id
ARTIFACT_REPORTS = "reports/"  # study run: <chart>.html and <chart>.png (mlflow_hpo.reports)
ARTIFACT_WEIGHTS = "model.weights.h5"  # mlflow_hpo.log_weights(model): weights alone
MODEL_ARTIFACT = "model"

# --- tags on registered model versions (mlflow_hpo.registry.promote_best) ---
TAG_VERSION_STUDY_RUN_ID = "mlflow_hpo.study_run_id"
TAG_VERSION_TRIAL_RUN_ID = "mlflow_hpo.trial_run_id"
TAG_VERSION_OBJECTIVE = "mlflow_hpo.objective"
TAG_VERSION_OBJECTIVE_VALUE = "mlflow_hpo.objective_value"
TAG_VERSION_DIRECTION = "mlflow_hpo.direction"
TAG_VERSION_SELECTED_BY = "mlflow_hpo.selected_by"  # how the best model was found

# --- run names ---
TRIAL_RUN_NAME = "trial-{number}"

# --- trial states (backend-neutral) and the run status each maps to ---
STATE_COMPLETE = "COMPLETE"
STATE_PRUNED = "PRUNED"
STATE_FAIL = "FAIL"
STATE_KILLED = "KILLED"  # interrupted (KeyboardInterrupt) while running
RUN_STATUS_FOR_STATE = {
    STATE_COMPLETE: "FINISHED",
    STATE_PRUNED: "KILLED",
    STATE_FAIL: "FAILED",
    STATE_KILLED: "KILLED",
}

# --- backends ---
BACKEND_OPTUNA = "optuna"
BACKEND_KERAS_TUNER = "keras_tuner"
BACKEND_SKLEARN = "sklearn"
BACKEND_HYPEROPT = "hyperopt"
BACKEND_RAY = "ray_tune"
BACKENDS = (BACKEND_OPTUNA, BACKEND_KERAS_TUNER, BACKEND_SKLEARN, BACKEND_HYPEROPT, BACKEND_RAY)

# --- environment ---
ENV_HOME = "MLFLOW_HPO_HOME"  # where journals live (default: the user cache dir)
ENV_STRICT = "MLFLOW_HPO_STRICT"
ENV_REPORTS = "MLFLOW_HPO_REPORTS"  # "0" turns off the reports written when a study closes
