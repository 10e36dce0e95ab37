"""Fault-injection campaigns: grids of (method, configuration, rate) points x trials, evaluated by
the engine with the trial axis sharded over all devices, streamed to a JSON-lines results file
and resumable after a kill with identical results."""
from jaxfault.campaign.config import identity_of, load_config, load_eval_data, validate_config  # noqa: F401
from jaxfault.campaign.grid import GridPoint, expand_grid  # noqa: F401
from jaxfault.campaign.methods import group_key, split_point, validate_point  # noqa: F401
from jaxfault.campaign import report  # noqa: F401
from jaxfault.campaign.runner import Campaign, EvalData, run_campaign, run_point, trial_mesh  # noqa: F401
