"""Every MLflow tag the project writes, and the metric names it ranks on, named once.

Run tags start with ``fpn.``; model-version tags (written on a registered version by the search)
are plain words, as the registry's ``list`` shows them. Code that writes or filters on a tag
uses these names, so that a search filter and the writer it depends on cannot drift apart
(``tests/test_tags.py`` fails on a literal tag key anywhere else).
"""

from __future__ import annotations

# -- MLflow's own run tags --------------------------------------------------------------------
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"

# -- a training run (fpn.training.driver) ---------------------------------------------------
RUN_NAME = "fpn.run_name"  #: the run's stable name (found again on a re-run)
RUN_IDENTITY = "fpn.run_identity"  #: a hash of its store fingerprint and its config hash
CONFIG_HASH = "fpn.config_hash"
TASK = "fpn.task"
MODEL = "fpn.model"
TARGET = "fpn.target"
RATIO = "fpn.ratio"
STORE = "fpn.store"
STORE_FINGERPRINT = "fpn.store_fingerprint"
GIT_REVISION = "fpn.git_revision"
PATIENTS_USED = "fpn.patients_used"
TRAIN_VISITS = "fpn.train_visits"
INIT = "fpn.init"
STATUS = "fpn.status"  #: one of the STATUS_* values, or the failed run's MLflow status, lower
STATUS_FINISHED = "finished"
STATUS_STOPPED = "stopped"  #: ASHA stopped the trial
BEST_SCORE = "fpn.best_score"

# -- the search (tune/search.py) --------------------------------------------------------------
SEARCH_ROLE = "fpn.search_role"  #: pretrain | ratio | trial | matched | table
SEARCH_TASK = "fpn.search_task"
SSL = "fpn.ssl"
STUDY = "fpn.study"
STUDY_DB = "fpn.study_db"
CONFIGURATION = "fpn.configuration"
SEARCH_SPACE = "fpn.search_space"
TRIAL_ID = "fpn.trial_id"
TRIAL_PARAMS = "fpn.trial_params"
BEST_TRIAL = "fpn.best_trial"
BEST_RUN_ID = "fpn.best_run_id"
TEST_KEYS_SHA = "fpn.test_keys_sha"
#: a trial's (and its pretraining run's) shared pretraining: its key, and whether the trial
#: trained it or reused it
PRETRAINING_KEY = "fpn.pretraining_key"
PRETRAINING = "fpn.pretraining"
PRETRAINING_TRAINED = "trained"
PRETRAINING_REUSED = "reused"
#: on a ratio's parent run: how many of its trials trained / reused a shared pretraining
PRETRAININGS_TRAINED = "fpn.pretrainings_trained"
PRETRAININGS_REUSED = "fpn.pretrainings_reused"
#: values of :data:`SEARCH_ROLE`
ROLE_RATIO = "ratio"
ROLE_TRIAL = "trial"
ROLE_PRETRAIN = "pretrain"
ROLE_TABLE = "table"
ROLE_MATCHED = "matched"  #: the compute-matched scratch run of a ratio


def best_param(name: str) -> str:
    """The parent-run tag holding the best trial's value of the searched parameter ``name``."""
    return f"best.{name}"


# -- the paper table (tune/experiments) -------------------------------------------------------
ROLE = "fpn.role"  #: paper-table, on the grid's parent run
PRESET = "fpn.preset"
MODELS = "fpn.models"
RATIOS = "fpn.ratios"
SEEDS = "fpn.seeds"
PAPER_TABLE = "fpn.paper_table"
#: the table row a run belongs to (tune.core.row_label), on every run of a front-end's jobs
METHOD = "fpn.method"
FAILED_RUNS = "fpn.failed_runs"


# -- benchmarks (benchmarks/) ------------------------------------------------------------------
BENCHMARK = "fpn.benchmark"
BENCHMARK_STRATEGY = "fpn.benchmark_strategy"


# -- evaluation (fpn.evaluation) ----------------------------------------------------------------
def split_store_fingerprint(split: str) -> str:
    """The run tag naming the store a split's metrics were measured on."""
    return f"fpn.{split}_store_fingerprint"


# -- the registry (fpn.registry): registered-model and model-version tags ----------------------
CHAMPION_STACK = "fpn.champion_stack"
CHAMPION_HISTORY = "fpn.champion_history"
MODEL_URI = "fpn.model_uri"
GATE = "fpn.gate"
GATE_OVERRIDE = "fpn.gate_override"
PROMOTED_AT = "fpn.promoted_at"
FORCED_PROMOTION = "fpn.forced_promotion"
ROLLED_BACK_AT = "fpn.rolled_back_at"
#: tags of a registered version written by the search (plain words, shown by ``registry list``)
VERSION_RATIO = "ratio"
VERSION_SSL = "ssl"
VERSION_VAL_DICE = "val_dice"
VERSION_TEST_DICE = "test_dice"
VERSION_TEST_DICE_STD = "test_dice_std"
VERSION_STORE_FINGERPRINT = "store_fingerprint"
VERSION_TEST_SPLIT = "test_split"
VERSION_TEST_KEYS_SHA = "test_keys_sha"
VERSION_STUDY = "study"
VERSION_TRIAL = "trial"
VERSION_GIT_REVISION = "git_revision"
VERSION_MLFLOW_RUN_ID = "mlflow_run_id"
VERSION_PRETRAINED = "pretrained"
VERSION_TAGS = (VERSION_RATIO, VERSION_SSL, VERSION_VAL_DICE, VERSION_TEST_DICE,
                VERSION_TEST_DICE_STD, VERSION_STORE_FINGERPRINT, VERSION_TEST_SPLIT,
                VERSION_TEST_KEYS_SHA, VERSION_STUDY, VERSION_TRIAL, VERSION_GIT_REVISION,
                VERSION_MLFLOW_RUN_ID, VERSION_PRETRAINED)

# -- metrics --------------------------------------------------------------------------------
#: what every epoch reports and what checkpoints, trials (Optuna, ASHA) and the k best rank on:
#: the selection score of the validation split (Dice, or SSIM when pretraining)
VAL_SCORE = "val_score"
