"""The recipe: one YAML file that describes a whole run, typed and validated up front.

Every field carries help text. Validation happens before any work starts; each error names the recipe file, the
line, the key path and what was expected. One module per section (models, data, generate, filter, train, evaluate,
coverage, slurm), the whole recipe and its checks across sections in `root`, reading a file in `loading`.
"""

from distill.recipe.base import PACKAGED_MODELS, Section, resolve_existing, template_variables  # noqa: F401
from distill.recipe.models import EngineSettings, ModelSpec, Models  # noqa: F401
from distill.recipe.data import HeldoutSplit, DataFormat, DataSource, DataSettings  # noqa: F401
from distill.recipe.generate import (  # noqa: F401
    SamplingSettings, GridSettings, LabelSettings, EndpointSettings, FewShotSettings, SCORED_COMPLETION,
    GenerateSettings,
)
from distill.recipe.filter import (  # noqa: F401
    LengthFilter, ExactDedupFilter, RegexFilter, VerifierFilter, NearDedupFilter, SemanticDedupFilter,
    DecontaminateFilter, RepetitionFilter, JsonSchemaFilter, RefusalFilter, ReferenceMatchFilter, MajorityVoteFilter,
    JudgeFilter, CalibrationSettings, FilterStep, FilterSettings,
)
from distill.recipe.train import RepairSettings, OnPolicySettings, KDSettings, LoraSettings, TrainSettings  # noqa: F401
from distill.recipe.evaluate import MetricName, EvalSet, GateSettings, EvaluateSettings  # noqa: F401
from distill.recipe.coverage import SyntheticVsRealSettings, CoverageSettings  # noqa: F401
from distill.recipe.slurm import (  # noqa: F401
    StageResources, TrainResources, VLLM_SERVE_OPTION, TeacherServerSettings, SlurmSettings, UNLIMITED,
    slurm_minutes,
)
from distill.recipe.root import Recipe  # noqa: F401
from distill.recipe.loading import parse_override, load_recipe  # noqa: F401
