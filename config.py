"""config.py — the model registry, `--config key=val` parsing and checkpoint reading, shared by evaluate.py,
train.py and solve.py (in the spirit of nanoGPT's configurator: dataclasses are the single source of truth,
values are parsed with `ast.literal_eval` and must keep the default's type)."""
import ast
import dataclasses
import difflib
import importlib
import os

import torch

MODELS = ("trm", "hrm", "etrm", "prr", "deep_recursive")


# Model keys that do not change the shapes or the function of the weights.
RUNTIME_KEYS = {"forward_dtype", "batch_size", "halt_exploration_prob", "num_puzzle_identifiers", "eval_n_steps",
                "memory_efficient"}


def model_module(name):
    if name not in MODELS:
        raise SystemExit(f"error: unknown model {name!r}; choose from {', '.join(MODELS)}")
    return importlib.import_module(name)


def coerce(key, text, default, model):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    kind = type(default)
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and not isinstance(value, str):
        value = text
    if type(value) is not kind:
        raise SystemExit(f"error: config key {key!r} for model {model!r} takes a {kind.__name__} "
                         f"(default {default!r}), got {text!r}")
    return value


def apply_overrides(pairs, train_cfg, model_cfg, model):
    """Set key=val pairs on whichever dataclass owns the key; unknown keys are one-line errors."""
    changed = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: --config takes key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        owner = next((c for c in (train_cfg, model_cfg) if key in {f.name for f in dataclasses.fields(c)}), None)
        if owner is None:
            known = [f.name for c in (train_cfg, model_cfg) for f in dataclasses.fields(c)]
            hint = difflib.get_close_matches(key, known, 1)
            raise SystemExit(f"error: unknown config key {key!r} for model {model!r}"
                             + (f"; did you mean {hint[0]!r}?" if hint else "; see python train.py --help"))
        value = coerce(key, text, getattr(owner, key), model)
        setattr(owner, key, value)
        changed[key] = value
    return changed


def load_file(path):
    if not os.path.exists(path):
        raise SystemExit(f"error: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a torch file at all
        raise SystemExit(f"error: {path} is not a readable checkpoint (truncated or corrupt: {type(e).__name__})")


def check_config(theirs, ours, path, model_name):
    allowed = runtime_keys(model_name)
    bad = [k for k in ours if k not in allowed and k in theirs and theirs[k] != ours[k]]
    if bad:
        raise SystemExit(f"error: {path} was trained with a different {model_name} config: "
                         + ", ".join(f"{k}={theirs[k]!r} (this run: {ours[k]!r})" for k in bad))


def read_checkpoint(path, model_name, model_cfg=None):
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or "model_name" not in ckpt:
        raise SystemExit(f"error: {path} is not a nanoTRM checkpoint (reference TRM weights load through "
                         "trm.convert_reference_state_dict)")
    if ckpt["model_name"] != model_name:
        raise SystemExit(f"error: {path} is a checkpoint of model {ckpt['model_name']!r}, not {model_name!r}")
    if model_cfg is not None:
        check_config(ckpt["model_config"], dataclasses.asdict(model_cfg), path, model_name)
    return ckpt


def runtime_keys(model_name):
    """Config keys that may differ from a checkpoint's: ours, plus those the model file declares."""
    return RUNTIME_KEYS | set(getattr(model_module(model_name), "RUNTIME_KEYS", ()))


