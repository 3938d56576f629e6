"""config.py — the model registry and `--config key=val` parsing and checking, shared by evaluate.py,
train.py and solve.py (checkpoint files and run folders: checkpoint.py). In the spirit of nanoGPT's
configurator: dataclasses are the single source of truth (types, defaults, and in the field comments the
choices of string keys), values are parsed with `ast.literal_eval` and must keep the default's type, and every
fault is one line starting "error: " naming the key, value or file."""
import ast
import dataclasses
import difflib
import importlib
import inspect
import math
import re

from trm import config_from  # noqa: F401  (config dataclass from a checkpoint's dict; re-exported)

MODELS = ("trm", "hrm", "etrm", "prr", "deep_recursive")


# Model keys that do not change the shapes or the function of the weights: a checkpoint may be evaluated (or
# training started from it) with other values. The recursion depths are among them, so a model can think
# longer at test time than it did in training ("deep thinking", Schwarzschild et al. 2021).
RUNTIME_KEYS = {"forward_dtype", "halt_exploration_prob", "num_puzzle_identifiers", "eval_n_steps",
                "memory_efficient", "halt_max_steps", "H_cycles", "L_cycles", "num_steps"}


def build_model(mod, cfg, name):
    """mod.Model(cfg), a config the model itself rejects (e.g. a non-square canvas) as a one-line error."""
    try:
        return mod.Model(cfg)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: model {name!r} cannot be built with this config: {e}")


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
    """Set key=val pairs on whichever dataclass owns the key; unknown keys are one-line errors.
    Types come from the dataclass field's default (the error shows it, not the value set so far)."""
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
        value = coerce(key, text, field_default(type(owner), key), model)
        setattr(owner, key, value)
        changed[key] = value
    return changed


def field_default(cls, key):
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def comments(cls):
    """The comment beside each field in the source of `cls` (and its dataclass bases): {name: text}."""
    src = [line.strip() for c in cls.__mro__ if dataclasses.is_dataclass(c) for line in inspect.getsource(c).splitlines()]
    return {f.name: next((s.split("#", 1)[1].strip() for s in src if s.startswith(f.name + ":") and "#" in s), "")
            for f in dataclasses.fields(cls)}


def describe(cls):
    """One line per field: name, type, default and its comment (what --help prints)."""
    notes = comments(cls)
    return "\n".join(f"  {f.name:<26}{type(f.default).__name__:<6}{f.default!r:<14}{notes[f.name]}"
                     for f in dataclasses.fields(cls))


def choices(cls):
    """Allowed values of the string keys whose comment lists them as `a | b (note) | c`: {name: (a, b, c)}.
    The comment is the single source: the first alternative is the last word before the first bar (after any
    `label:`), each other one the first word after its bar."""
    out = {}
    for name, note in comments(cls).items():
        if isinstance(field_default(cls, name), str) and " | " in note:
            alts = [re.sub(r"\(.*?\)", "", a).split() for a in note.split(" | ")]
            out[name] = tuple([alts[0][-1]] + [a[0] for a in alts[1:]])
    return out


def check_values(cfg, model):
    """Ranges every model config obeys, read from the dataclass itself: numbers finite and >= 0 (any sign when the
    comment says "any real", > 0 when it says "> 0"); a count whose default is positive stays >= 1 unless its
    comment documents what 0 means; a chance lies in [0, 1]; string choices as the comments list them; heads
    divide the width (and leave RoPE an even head size)."""
    cls, notes = type(cfg), comments(type(cfg))
    check_choices(cfg, model)
    for f in dataclasses.fields(cfg):
        key, value, default, note = f.name, getattr(cfg, f.name), field_default(cls, f.name), notes[f.name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        least = "> 0" if "> 0" in note else "" if "any real" in note else ">= 0"
        if not math.isfinite(value) or (least and value < 0) or (least == "> 0" and value == 0):
            bad(key, value, model, f"a finite number {least}".rstrip())
        if isinstance(value, int) and default >= 1 and "0 =" not in note and value < 1:
            bad(key, value, model, "an integer >= 1")
        if ("chance" in note or key.endswith("_prob")) and value > 1:
            bad(key, value, model, "a probability in [0, 1]")
    heads, width = getattr(cfg, "num_heads", None), getattr(cfg, "hidden_size", None)
    if heads and width and width % heads:
        bad("num_heads", heads, model, f"a divisor of hidden_size={width}")
    if heads and width and getattr(cfg, "pos_encodings", "") == "rope" and (width // heads) % 2:
        bad("num_heads", heads, model, f"a head size hidden_size/num_heads that is even for RoPE (hidden_size={width})")


def check_choices(cfg, model):
    for key, allowed in choices(type(cfg)).items():
        if getattr(cfg, key) not in allowed:
            bad(key, getattr(cfg, key), model, "one of " + ", ".join(allowed))


def bad(key, value, model, expected):
    raise SystemExit(f"error: config key {key!r} for model {model!r} must be {expected}, got {value!r}")


def runtime_keys(model_name):
    """Config keys that may differ from a checkpoint's: ours, plus those the model file declares."""
    return RUNTIME_KEYS | set(getattr(model_module(model_name), "RUNTIME_KEYS", ()))


# ----------------------------------------------------------------------------------------------------
# A model's training recipe, and train.py's --help

def train_defaults(mod, name, train_cls):
    """A model's training recipe (`TRAIN_DEFAULTS` in its file: keys of train.TrainConfig), checked."""
    recipe = dict(getattr(mod, "TRAIN_DEFAULTS", {}))
    for key, value in recipe.items():
        if key not in {f.name for f in dataclasses.fields(train_cls)} or \
                type(value) is not type(field_default(train_cls, key)):
            raise SystemExit(f"error: {name}.TRAIN_DEFAULTS sets {key}={value!r}, not a training key of that type")
    return recipe


def help_text(train_cls, datasets):
    """--help of train.py: models, datasets, every key with its default and comment, each model's recipe."""
    parts = ["models: " + ", ".join(MODELS), "datasets: " + ", ".join(datasets) + " (or a built folder)",
             "", "training keys (--config key=val):", describe(train_cls)]
    for name in MODELS:
        mod = model_module(name)
        parts += ["", f"model keys for --model {name}:", describe(mod.Config)]
        recipe = train_defaults(mod, name, train_cls)
        if recipe:
            parts.append(f"  training defaults of --model {name} (its recipe; --config overrides): "
                         + " ".join(f"{k}={v!r}" for k, v in recipe.items()))
    return "\n".join(parts)
