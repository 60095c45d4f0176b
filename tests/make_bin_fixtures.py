"""Writes the small torch.save fixtures in tests/fixtures/bin/ and the values they hold as .npz beside them.

Run by hand (needs torch; the tests that read the outputs do not):  python tests/make_bin_fixtures.py
The outputs are committed. torch.save stamps each file with a random serialization id, so rerunning changes
the .bin bytes but not the tensors or the .npz files.
"""
import json
import os

import numpy as np
import torch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "bin")


def save(name, state, expected=None):
    """torch.save ``state`` as <name>.bin and its values (as float32 for bf16) as <name>.npz."""
    torch.save(state, os.path.join(HERE, name + ".bin"))
    expected = expected or {k: v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
                            for k, v in state.items()}
    np.savez(os.path.join(HERE, name + ".npz"), **expected)


def main():
    os.makedirs(os.path.join(HERE, "sharded"), exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    # float32: a module's state dict (an OrderedDict carrying _metadata) plus views sharing one storage
    f32 = torch.nn.Linear(4, 3).state_dict()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) * 0.5 - 3
    f32["full"] = base
    f32["transposed"] = base.t()  # stride (1, 6)
    f32["offset_view"] = base[1:3, 2:5]  # storage offset 8, stride (6, 1)
    f32["every_other"] = base[:, ::2]  # stride (6, 2)
    f32["param"] = torch.nn.Parameter(torch.randn(3, 2, generator=g))
    f32["scalar"] = torch.tensor(1.5)
    f32["empty"] = torch.zeros(0, 3)
    save("f32", f32)

    half = torch.randn(5, 4, generator=g).half()
    save("f16", {"weight": half, "column": half[:, 1], "bias": torch.tensor([65504.0, -0.0, 1e-4]).half()})

    bf16 = torch.randn(3, 4, generator=g).bfloat16()
    save("bf16", {"weight": bf16, "transposed": bf16.t(), "big": torch.tensor([3.0e38, -1.0e-38, 1.0]).bfloat16()})

    save("ints", {
        "position_ids": torch.arange(8).expand(1, -1),  # int64 with a zero stride
        "int32": torch.tensor([-(2 ** 31), 7, 2 ** 31 - 1], dtype=torch.int32),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "float64": torch.tensor([1.0 / 3.0, -2.5], dtype=torch.float64),
    })

    # a sharded checkpoint as transformers writes it: two shards and an index naming the shard of each key
    shards = {
        "pytorch_model-00001-of-00002.bin": {
            "yoso.embeddings.word_embeddings.weight": torch.randn(6, 4, generator=g),
            "yoso.embeddings.position_ids": torch.arange(5).expand(1, -1),
        },
        "pytorch_model-00002-of-00002.bin": {
            "cls.predictions.bias": torch.randn(6, generator=g),
            "cls.predictions.transform.dense.weight": torch.randn(4, 4, generator=g).t(),
        },
    }
    weight_map, expected = {}, {}
    for shard, state in shards.items():
        torch.save(state, os.path.join(HERE, "sharded", shard))
        weight_map.update(dict.fromkeys(state, shard))
        expected.update({k: v.numpy() for k, v in state.items()})
    with open(os.path.join(HERE, "sharded", "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.nbytes for v in expected.values())}, "weight_map": weight_map},
                  f, indent=2)
    np.savez(os.path.join(HERE, "sharded.npz"), **expected)
    legacy_checkpoint()


def legacy_checkpoint():
    """tests/fixtures/legacy/: the reference case mlm_basic as an older hub repository ships it: config.json and
    only pytorch_model.bin, holding the tied decoder weight and bias and the position_ids buffer as old
    transformers versions saved them."""
    import shutil

    import transformers

    source = os.path.join(os.path.dirname(HERE), "ref", "mlm_basic")
    target = os.path.join(os.path.dirname(HERE), "legacy")
    os.makedirs(target, exist_ok=True)
    model = transformers.YosoForMaskedLM.from_pretrained(source)
    state = dict(model.state_dict())
    state["cls.predictions.decoder.weight"] = model.cls.predictions.decoder.weight
    state["cls.predictions.decoder.bias"] = model.cls.predictions.bias
    state["yoso.embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings).expand(1, -1) + 2
    torch.save(state, os.path.join(target, "pytorch_model.bin"))
    shutil.copy(os.path.join(source, "config.json"), target)


if __name__ == "__main__":
    main()
