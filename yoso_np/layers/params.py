"""Weight dicts are flat and keyed by checkpoint names; a layer takes the sub-dict below a prefix."""


def sub(weights, prefix):
    """{name[len(prefix):]: array} for the names under ``prefix`` (which ends with a dot)."""
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def add_prefix(grads, prefix):
    return {prefix + k: v for k, v in grads.items()}
