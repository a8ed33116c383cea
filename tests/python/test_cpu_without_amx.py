"""The CPU products on processors with AMX, with the tile unit turned off (BNB_CPU_AMX=0).

There the bfloat16 4-bit product of 5 rows and more and the int8 product run on the tile unit; the
AVX-512 paths beneath must stay correct for processors without it. The choice is made once per process,
so each check runs in a fresh interpreter (on processors without AMX it checks the same paths again).
"""

from helpers import run_python

CHECKS = """
import torch, bitsandbytes as bnb, bitsandbytes.functional as F
torch.manual_seed(0)
w = torch.randn(70, 1024)
x = torch.randn(20, 1024).bfloat16()
packed, state = F.quantize_4bit(w, blocksize=64, quant_type='nf4', compress_statistics=True)
y = bnb.matmul_4bit(x, packed.t(), state)
ref = x.double() @ F.dequantize_4bit(packed, state).to(torch.bfloat16).double().T
print('4bit', ((y.double() - ref).norm() / ref.norm()).item())
A = torch.randint(-127, 128, (40, 192), dtype=torch.int8)
B = torch.randint(-127, 128, (50, 192), dtype=torch.int8)
exact = bool((torch.ops.bitsandbytes.int8_linear_matmul(A, B).long() == A.long() @ B.long().T).all())
print('int8', exact)
"""


def test_products_without_amx_match_their_oracles():
    done = run_python(CHECKS, {"BNB_CPU_AMX": "0"})
    assert done.returncode == 0, done.stderr
    results = dict(line.split() for line in done.stdout.strip().splitlines() if line.split()[0] in ("4bit", "int8"))
    assert float(results["4bit"]) < 5e-3  # one bfloat16 rounding of the output
    assert results["int8"] == "True"
