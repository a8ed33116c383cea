"""bitsandbytes.utils helpers (compat.md §1.9)."""

import json

import pytest
import torch

from bitsandbytes import utils


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [30, 64]},
        {"nested": {"a": [1, 2.5, None, True]}, "text": "héllo ☃", "neg": -3, "float": 2.5592448711395264},
    ],
    ids=["empty", "quant_state_like", "nested_unicode"],
)
def test_pack_unpack_round_trip(payload):
    t = utils.pack_dict_to_tensor(payload)
    assert t.dtype == torch.uint8 and t.dim() == 1
    # The tensor is the UTF-8 encoding of the JSON text.
    assert bytes(t.tolist()) == json.dumps(payload).encode("utf-8")
    assert utils.unpack_tensor_to_dict(t) == payload


def test_unpack_accepts_a_copy():
    t = utils.pack_dict_to_tensor({"k": [1, 2, 3]})
    assert utils.unpack_tensor_to_dict(t.clone()) == {"k": [1, 2, 3]}


def test_linear_8bit_format_mapping():
    assert utils.LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING == {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
    assert utils.INVERSE_LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING == {0: "row", 1: "col32", 2: "col_turing", 3: "col_ampere"}
