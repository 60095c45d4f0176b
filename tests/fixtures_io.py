"""Read the reference fixtures written by tests/make_fixtures.py, without torch.

    from tests.fixtures_io import list_cases, load_case
    case = load_case("mlm_basic")
    model = YosoForMaskedLM.from_pretrained(case.path)
    logits = model(**case.model_inputs())  # compare with case.outputs["logits"]

Each case folder holds config.json and model.safetensors (as transformers' save_pretrained wrote them),
reference.npz (inputs and outputs together), grads.safetensors (the gradient of every weight, keyed like
model.safetensors) and case.json (class, description, notes, dtype, padded).
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

REF_DIR = Path(__file__).parent / "fixtures" / "ref"

# Arguments of a model call.
MODEL_INPUT_KEYS = (
    "input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds",
    "labels", "start_positions", "end_positions",
)
# reference.npz keys that are inputs; every other key is an output. grad_last_hidden_state is the upstream
# gradient G of the base-model cases, whose loss for the backward is sum(last_hidden_state * G).
INPUT_KEYS = MODEL_INPUT_KEYS + ("grad_last_hidden_state",)
CASE_FILES = ("config.json", "model.safetensors", "reference.npz", "grads.safetensors", "case.json")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    path: str  # the case folder, for from_pretrained(path)
    cls_name: str  # "YosoModel", "YosoForMaskedLM", ...
    config: dict  # config.json
    inputs: dict  # name -> np.ndarray, keys from INPUT_KEYS
    outputs: dict  # name -> np.ndarray: logits / last_hidden_state / ..., loss, hidden_states_<i>, grad_inputs_embeds
    grads: dict  # weight name -> np.ndarray, keys as in model.safetensors
    description: str
    notes: tuple  # how the reference was made (masks, patched transformers quirks)
    dtype: str  # "float32" or "float64"
    padded: bool  # some attention_mask entries are 0

    def model_inputs(self):
        """The inputs that are arguments of the model call (without grad_last_hidden_state)."""
        return {k: v for k, v in self.inputs.items() if k in MODEL_INPUT_KEYS}

    @property
    def num_hidden_states(self):
        return sum(1 for k in self.outputs if k.startswith("hidden_states_"))


def list_cases():
    """Names of all cases, sorted."""
    if not REF_DIR.is_dir():
        return []
    return sorted(p.name for p in REF_DIR.iterdir() if (p / "case.json").is_file())


def load_case(name):
    """Load one case by folder name; raises ValueError for an unknown name."""
    folder = REF_DIR / name
    if not (folder / "case.json").is_file():
        raise ValueError(f"name: expected one of {list_cases()}, got {name!r}")
    meta = json.loads((folder / "case.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "reference.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return Case(
        name=name,
        path=str(folder),
        cls_name=meta["class"],
        config=config,
        inputs={k: v for k, v in arrays.items() if k in INPUT_KEYS},
        outputs={k: v for k, v in arrays.items() if k not in INPUT_KEYS},
        grads=load_file(str(folder / "grads.safetensors")),
        description=meta["description"],
        notes=tuple(meta["notes"]),
        dtype=meta["dtype"],
        padded=bool(meta["padded"]),
    )


FIXTURES_DIR = REF_DIR.parent


def _groups(path):
    """An npz whose keys are 'group/.../name' as nested dicts of arrays (0-d string arrays become str)."""
    out = {}
    with np.load(path) as npz:
        for key in npz.files:
            value = npz[key]
            if value.dtype.kind == "U" and value.ndim == 0:
                value = str(value)
            node = out
            *parents, leaf = key.split("/", 2) if key.count("/") >= 2 else key.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return out


def load_activations():
    """(x, {name: {"float32": y, "float64": y}}): every activation of transformers' ACT2FN on the float64 grid x
    (float32: on x cast to float32), as tests/make_fixtures.py recorded them from torch."""
    groups = _groups(FIXTURES_DIR / "activations.npz")
    x = groups.pop("x")
    groups.pop("versions")
    return x, groups


def load_optimizer_trajectories():
    """{case: {"settings": dict, "grad_norm": (steps,), "lr": (steps,), "initial": {param: w}, "grads": {param:
    (steps, ...)}, "weights": {param: (steps, ...) after each step}, "momentum": {param: buffer after the last step}}}
    recorded from torch.optim.SGD, clip_grad_norm_ and transformers' schedules by tests/make_fixtures.py."""
    groups = _groups(FIXTURES_DIR / "optimizer.npz")
    groups.pop("versions")
    for case in groups.values():
        case["settings"] = json.loads(case["settings"])
        case.setdefault("momentum", {})
    return groups
