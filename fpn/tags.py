"""Every MLflow tag the project writes, named once.

Run tags start with ``fpn.``; model-version tags (written on a registered version by the search)
are plain words, as the registry's ``list`` shows them. Code that writes or filters on a tag
uses these names, so that a search filter and the writer it depends on cannot drift apart.
"""

from __future__ import annotations

# -- a training run (fpn.training.driver) ---------------------------------------------------
RUN_NAME = "fpn.run_name"  #: the run's stable name (found again on a re-run)
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
STATUS = "fpn.status"  #: finished | stopped
BEST_SCORE = "fpn.best_score"

# -- the search (tune/search.py) --------------------------------------------------------------
SEARCH_ROLE = "fpn.search_role"  #: pretrain | ratio | trial | table
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
#: value of :data:`SEARCH_ROLE` on a search's per-ratio parent run
ROLE_RATIO = "ratio"
ROLE_TRIAL = "trial"
ROLE_PRETRAIN = "pretrain"
ROLE_TABLE = "table"

# -- the paper table (tune/experiments) -------------------------------------------------------
ROLE = "fpn.role"  #: paper-table, on the grid's parent run
PRESET = "fpn.preset"
MODELS = "fpn.models"
RATIOS = "fpn.ratios"
SEEDS = "fpn.seeds"
PAPER_TABLE = "fpn.paper_table"
PAPER_TABLE_METHOD = "fpn.paper_table_method"
FAILED_RUNS = "fpn.failed_runs"

# -- evaluation (fpn.evaluation): f"fpn.{split}_store_fingerprint" -----------------------------
def split_store_fingerprint(split: str) -> str:
    return f"fpn.{split}_store_fingerprint"


# -- the registry (fpn.registry): model-version and registered-model tags ----------------------
CHAMPION_STACK = "fpn.champion_stack"
CHAMPION_HISTORY = "fpn.champion_history"
MODEL_URI = "fpn.model_uri"
GATE = "fpn.gate"
PROMOTED_AT = "fpn.promoted_at"
FORCED_PROMOTION = "fpn.forced_promotion"
ROLLED_BACK_AT = "fpn.rolled_back_at"
#: tags of a registered version written by the search (plain words, shown by ``registry list``)
VERSION_TAGS = ("ratio", "ssl", "val_dice", "test_dice", "test_dice_std", "store_fingerprint",
                "test_split", "test_keys_sha", "study", "trial", "git_revision", "mlflow_run_id",
                "pretrained")

