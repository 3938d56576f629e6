"""config.py — the model registry and `--config key=val` parsing and checking, shared by
evaluate.py, train.py and solve.py (checkpoint files and run folders: checkpoint.py). In the spirit
of nanoGPT's configurator: dataclasses are the single source of truth. Each field's annotation
states its type and rule (`hidden_size: "int >= 1" = 512   # D`, grammar in rules.py); values are
parsed with `ast.literal_eval` and coerced to that type; every fault is one line starting "error: "
naming the key, value or file. A rule between fields is a named function that a config class lists
in `cross_rules`: it returns None, or (key, what it must be). `check` is the one entry point."""
import ast
import dataclasses
import difflib
import importlib
import inspect
import rules

MODELS = ("trm", "hrm", "etrm", "prr", "deep_recursive")


# Model keys that do not change the shapes or the function of the weights: a checkpoint may be
# evaluated (or training started from it) with other values. The recursion depths are among them,
# so a model can think longer at test time than it did in training ("deep thinking", Schwarzschild
# et al. 2021).
RUNTIME_KEYS = {"forward_dtype", "halt_exploration_prob", "num_puzzle_identifiers", "eval_n_steps",
                "memory_efficient", "halt_max_steps", "H_cycles", "L_cycles", "num_steps"}


def build_model(mod, cfg, name):
    """mod.Model(cfg); a config the model rejects (a non-square canvas) is a one-line error."""
    try:
        return mod.Model(cfg)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: model {name!r} cannot be built with this config: {e}")


def model_module(name):
    if name not in MODELS:
        raise SystemExit(f"error: unknown model {name!r}; choose from {', '.join(MODELS)}")
    return importlib.import_module(name)


def config_from(cls, values):
    """A config dataclass from a dict (a checkpoint's, a config.json's), ignoring keys it lacks."""
    names = {f.name for f in dataclasses.fields(cls)}
    return dataclasses.replace(cls(), **{k: v for k, v in values.items() if k in names})


# --------------------------------------------------------------------------------------------------
# --config key=val: coerced to the field's type, checked against its rule

def coerce(key, text, rule, default, owner):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    kind = rule.kind
    if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if kind is float and type(value) is int:
        value = float(value)
    if kind is str and not isinstance(value, str):
        value = text
    if type(value) is not kind:
        raise SystemExit(f"error: config key {key!r}{owner} takes {rules.article(kind)} "
                         f"(default {default!r}), got {text!r}")
    return value


def apply_overrides(pairs, train_cfg, model_cfg, model):
    """Set key=val pairs on whichever dataclass owns the key; unknown keys are one-line errors.
    The error for a value of the wrong type shows the field's default, not the value set so far."""
    changed = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: --config takes key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        owner = next((c for c in (train_cfg, model_cfg) if key in rules.of(type(c))), None)
        if owner is None:
            known = [k for c in (train_cfg, model_cfg) for k in rules.of(type(c))]
            hint = difflib.get_close_matches(key, known, 1)
            raise SystemExit(f"error: unknown config key {key!r} for model {model!r}" + (
                f"; did you mean {hint[0]!r}?" if hint else "; see python train.py --help"))
        cls, label = type(owner), f" for model {model!r}" if owner is model_cfg else ""
        value = coerce(key, text, rules.of(cls)[key], field_default(cls, key), label)
        setattr(owner, key, value)
        changed[key] = value
    return changed


def field_default(cls, key):
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def check(cfg, model=None, world=1):
    """The one check of a config, before anything is written: every field against the rule in its
    annotation, then the class's `cross_rules`, then the batches split over `world` processes.
    `model` names the model whose config this is (None for train.py's and solve.py's own)."""
    for key, rule in rules.of(type(cfg)).items():
        expected = rule.broken(getattr(cfg, key))
        if expected:
            bad(key, getattr(cfg, key), model, expected)
    for cross_rule in getattr(cfg, "cross_rules", ()):
        broken = cross_rule(cfg)
        if broken:
            bad(broken[0], getattr(cfg, broken[0]), model, broken[1])
    split_over_ranks(cfg, world)


def split_over_ranks(cfg, world):
    """The keys a config lists in `split_over_ranks` (global batches) divide among the processes."""
    for key in getattr(cfg, "split_over_ranks", ()):
        if getattr(cfg, key) % world:
            raise SystemExit(f"error: config key {key!r} = {getattr(cfg, key)} is not divisible by "
                             f"the {world} processes (each takes an equal share)")


def bad(key, value, model, expected):
    owner = f" for model {model!r}" if model else ""
    raise SystemExit(f"error: config key {key!r}{owner} must be {expected}, got {value!r}")


def comments(cls):
    """The comment beside each field in the source of `cls` and its dataclass bases: {name: text}.
    For --help only: a comment describes a field, its annotation decides."""
    src = [line.strip() for c in cls.__mro__ if dataclasses.is_dataclass(c)
           for line in inspect.getsource(c).splitlines()]
    return {f.name: next((s.split("#", 1)[1].strip() for s in src
                          if s.startswith(f.name + ":") and "#" in s), "")
            for f in dataclasses.fields(cls)}


def describe(cls):
    """One line per field: name, default, rule and comment (what --help prints)."""
    notes, rule = comments(cls), rules.of(cls)
    return "\n".join(f"  {f.name:<23} {field_default(cls, f.name)!r:<12} {rule[f.name].text:<18} "
                     f"{notes[f.name]}".rstrip() for f in dataclasses.fields(cls))


def runtime_keys(model_name):
    """Config keys that may differ from a checkpoint's: ours, plus those the model file declares."""
    return RUNTIME_KEYS | set(getattr(model_module(model_name), "RUNTIME_KEYS", ()))


# --------------------------------------------------------------------------------------------------
# A model's training recipe, and train.py's --help

def train_defaults(mod, name, train_cls):
    """A model's training recipe (`TRAIN_DEFAULTS` in its file: train.TrainConfig keys), checked."""
    recipe = dict(getattr(mod, "TRAIN_DEFAULTS", {}))
    for key, value in recipe.items():
        rule = rules.of(train_cls).get(key)
        if rule is None:
            raise SystemExit(f"error: {name}.TRAIN_DEFAULTS sets {key}={value!r}, not a training "
                             "key")
        if rule.broken(value):
            raise SystemExit(f"error: {name}.TRAIN_DEFAULTS sets {key}={value!r}; {key} must be "
                             f"{rule.broken(value)}")
    return recipe


def help_text(train_cls, datasets):
    """--help of train.py: models, datasets, every key with its rule, default and comment, each
    model's recipe."""
    parts = ["models: " + ", ".join(MODELS),
             "datasets: " + ", ".join(datasets) + " (or a built folder)",
             "", "training keys (--config key=val):", describe(train_cls)]
    for name in MODELS:
        mod = model_module(name)
        parts += ["", f"model keys for --model {name}:", describe(mod.Config)]
        recipe = train_defaults(mod, name, train_cls)
        if recipe:
            parts.append(f"  training defaults of --model {name} (its recipe; --config overrides): "
                         + " ".join(f"{k}={v!r}" for k, v in recipe.items()))
    return "\n".join(parts)
